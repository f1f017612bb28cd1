"""Runs the scenarios inside the lab and collects every measurement.

Ways are interleaved: for each size and repetition, every way runs once, in an order
rotated between repetitions, on the same broker and in namespaces laid out alike (one
for vnetd, one for the `ip` baselines, one for an older vnetd), so each ratio compares
figures taken side by side on this shared, noisy machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench import events, scale, ways
from bench import libvirt as lv_bench
from bench import responder as responder_mod
from bench.client import LeanRpc
from bench.lab import log, run
from bench.lean_amqp import LeanSubscriber
from bench.ways import Run
from tests.support.daemon import DaemonProcess
from tests.support.env import REPO_ROOT

NOT_AVAILABLE = "not available"


@dataclass
class Plan:
    sizes: list[int]
    reps: dict[int, int]
    concurrency: list[int]
    scale_links: list[int]
    sequential_unplug_max: int
    event_rates: list[float | None] = field(default_factory=lambda: [100.0, 1000.0])
    event_seconds: float = 2.0
    event_checks: bool = True
    """The broker's ceiling and the second-subscriber check after the event rates."""
    plug_existing: list[int] = field(default_factory=lambda: [0, 1000])
    """The existing-interfaces axis of the plug scenario: TAPs already in the namespace."""
    plug_existing_n: int = 100
    plug_existing_reps: int = 1
    libvirt_n: int = 10
    """Networks per repetition of the libvirt scenario (4 calls each)."""
    libvirt_reps: int = 2
    publisher_n: int = 20000
    publisher_reps: int = 3
    responders: tuple[str, ...] = responder_mod.WAYS
    """The no-op responders measured (bench/responder.py); the goal's is `lean`."""
    client_check_responders: tuple[str, ...] = responder_mod.WAYS
    client_check_reps: int = 3
    """Above this N, ways that delete one device at a time (~18 ms each) are not timed
    for unplug; their TAPs are removed with one group delete instead."""
    before_ref: str | None = None
    profile: Path | None = None
    """Write a py-spy profile (raw, collapsed stacks) of the daemon during plug/unplug here."""

    @classmethod
    def quick(cls) -> Plan:
        return cls(sizes=[100], reps={100: 1}, concurrency=[64], scale_links=[0, 1000],
                   sequential_unplug_max=100, event_rates=[100.0, 1000.0], event_seconds=1.5,
                   event_checks=False,
                   plug_existing=[0, 1000], plug_existing_n=100, plug_existing_reps=1,
                   libvirt_n=5, libvirt_reps=2, publisher_n=5000, publisher_reps=1,
                   client_check_responders=("lean",), client_check_reps=1)

    @classmethod
    def full(cls, before_ref: str | None) -> Plan:
        return cls(sizes=[100, 1000, 5000], reps={100: 3, 1000: 3, 5000: 1},
                   concurrency=[1, 16, 64], scale_links=[0, 1000, 10000],
                   sequential_unplug_max=1000, before_ref=before_ref,
                   event_rates=[1000.0, 5000.0, 10000.0, 15000.0, 20000.0, 25000.0, None],
                   event_seconds=3.0, plug_existing=[0, 1000, 10000], plug_existing_n=1000,
                   plug_existing_reps=3,
                   libvirt_n=30, libvirt_reps=4)


@dataclass
class Env:
    """Where the benchmark runs: the broker URL and a way to get fresh namespaces."""

    amqp_url: str
    new_ns: Callable[[], str]
    del_ns: Callable[[str], None]
    workdir: Path
    suffix: str
    daemon_env: dict[str, str] = field(default_factory=dict)
    """Environment for every vnetd started (PYTHONPATH of an exported --ref tree)."""


@dataclass
class Results:
    mode: str
    runs: list[Run] = field(default_factory=list)
    scale: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    client_check: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per no-op responder: driven by one client process and by two (see client_check)."""
    publisher: list[dict[str, Any]] = field(default_factory=list)
    """bench/publisher.py runs: the event publisher alone."""
    events_ceiling: dict[str, Any] = field(default_factory=dict)
    """The broker's ceiling for the events' message size, and the second-subscriber check."""


def _ours_left(ns: str) -> list[str]:
    out = run("ip", "-n", ns, "-j", "link", "show").stdout
    return [e["ifname"] for e in json.loads(out or "[]") if e["ifname"][:1] in "pqrstuvwxy"
            and e["ifname"][1:].isdigit()]


def clean(ns: str) -> None:
    """Remove the TAPs a way left behind, in one group delete (not timed)."""
    left = _ours_left(ns)
    if left:
        ways.batch_way(ns, "unplug", left, group=4242)


def check_plugged(ns: str, names: list[str]) -> None:
    out = json.loads(run("ip", "-n", ns, "-j", "link", "show").stdout or "[]")
    master = {e["ifname"]: e.get("master") for e in out}
    wrong = [n for i, n in enumerate(names) if master.get(n) != ways.bridge_of(i)]
    if wrong:
        raise ways.WayError(f"{len(wrong)} TAPs not plugged as asked, e.g. {wrong[:3]}")


def export_tree(ref: str) -> Path:
    """vnetd/ as it was at `ref` (git archive, no change to the repository)."""
    dest = Path(tempfile.mkdtemp(prefix="vnetd-bench-before-"))
    data = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", ref, "vnetd"],
                          capture_output=True, check=True).stdout
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(dest, filter="data")
    return dest


async def _start_daemon(env: Env, ns: str, tag: str, extra_env: dict[str, str] | None = None,
                        *, minimal_config: bool = False, **sections: Any) -> DaemonProcess:
    d = DaemonProcess(host_id=f"b-{env.suffix}-{tag}", amqp_url=env.amqp_url, netns=ns,
                      workdir=env.workdir / "daemons" / tag, extra=sections,
                      env={**env.daemon_env, **(extra_env or {})}, ready_timeout=60)
    if minimal_config:  # an older vnetd refuses keys it does not know yet
        d.config = {"host_id": d.host_id, "amqp": {"url": env.amqp_url, "prefetch": 128},
                    "netlink": {"netns": ns}, "libvirt": {"enabled": False},
                    "log": {"format": "json", "level": "info"}}
    await d.start()
    return d


@dataclass
class Responder:
    """A no-op responder process (bench/responder.py) and the host id it answers for."""

    way: str
    host_id: str
    proc: subprocess.Popen[str]

    @property
    def label(self) -> str:
        return f"no-op responder ({self.way})"

    async def stop(self) -> None:
        self.proc.terminate()
        await asyncio.to_thread(self.proc.wait)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


async def _start_responder(env: Env, way: str, host_id: str, prefetch: int,
                           reply: bytes) -> Responder:
    proc = subprocess.Popen(
        [str(REPO_ROOT / ".venv" / "bin" / "python"), "-m", "bench.responder", way,
         env.amqp_url, host_id, str(prefetch), reply.decode()], cwd=REPO_ROOT,
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    if line.strip() != "READY":
        proc.kill()
        raise RuntimeError(f"the no-op responder ({way}) did not start")
    return Responder(way, host_id, proc)


async def sample_reply(rpc: LeanRpc, host_id: str) -> bytes:
    """The body of one of vnetd's `tap.ensure` replies (a TAP created and attached, as in
    the plug ways; names of the same length), encoded compactly as vnetd's orjson does:
    what the no-op responders answer with."""
    name = ways.tap_names("w", 99)[-1]
    reply = await rpc.call(host_id, "tap.ensure", {"name": name, "bridge": ways.bridge_of(0)})
    assert reply.get("ok") is True, reply
    assert (await rpc.call(host_id, "tap.delete", {"name": name})).get("ok") is True
    return json.dumps(reply, separators=(",", ":"), ensure_ascii=False).encode()


async def plug_unplug(env: Env, plan: Plan, res: Results) -> None:
    # One namespace per family of ways, laid out alike: a vnetd watches its namespace
    # (and publishes an event for every change in it), so a baseline or an older vnetd
    # sharing it would pay for the current daemon's watcher.
    ns_vnetd, ns_ip = env.new_ns(), env.new_ns()
    spaces = [ns_vnetd, ns_ip]
    daemons: list[DaemonProcess] = []
    responders: list[Responder] = []
    before_dir = None
    daemons_spy: list[subprocess.Popen[bytes]] = []
    try:
        vnetd = await _start_daemon(env, ns_vnetd, "plug")
        daemons.append(vnetd)
        before = None
        ns_before = None
        if plan.before_ref:
            before_dir = export_tree(plan.before_ref)
            ns_before = env.new_ns()
            spaces.append(ns_before)
            for attempt in range(3):
                try:
                    before = await _start_daemon(env, ns_before, f"before{attempt}",
                                                 {"PYTHONPATH": str(before_dir)},
                                                 minimal_config=True)
                    daemons.append(before)
                    break
                except Exception as exc:  # the old tree may not start: say so, go on
                    # (before 496ed7a a forked pyroute2 helper could stop it at start)
                    res.notes.append(f"vnetd at {plan.before_ref} did not start "
                                     f"(attempt {attempt + 1}): {exc}"[:300])
        ns_quiet = env.new_ns()
        spaces.append(ns_quiet)
        quiet = await _start_daemon(env, ns_quiet, "noevents", events={"enabled": False})
        daemons.append(quiet)
        spy = None
        if plan.profile is not None:
            spy = subprocess.Popen([str(REPO_ROOT / ".venv" / "bin" / "py-spy"), "record",
                                    "--pid", str(vnetd.pid), "-f", "raw", "-r", "250",
                                    "-o", str(plan.profile)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            daemons_spy.append(spy)
        async with LeanRpc(env.amqp_url) as rpc:
            for br in ways.bridges_for(max(plan.sizes)):
                for d in daemons:
                    reply = await rpc.call(d.host_id, "bridge.ensure", {"name": br})
                    assert reply.get("ok") is True, reply
                run("ip", "-n", ns_ip, "link", "add", br, "type", "bridge")
                run("ip", "-n", ns_ip, "link", "set", br, "up")
            # warm-up: imports, connections, caches (not recorded)
            warm = ways.tap_names("w", 20)
            for d in daemons:
                await ways.vnetd_jobs(rpc, d.host_id, "plug", warm, 4)
                await ways.vnetd_jobs(rpc, d.host_id, "unplug", warm, 4)
            sample = await sample_reply(rpc, vnetd.host_id)
            for way in plan.responders:
                responders.append(await _start_responder(
                    env, way, f"b-{env.suffix}-noop-{way}", vnetd.config["amqp"]["prefetch"],
                    sample))
                await ways.noop_jobs(rpc, responders[-1].host_id, "plug", warm, 4)
            serving = {resp.label: resp.proc.pid for resp in responders}

            for n in plan.sizes:
                for rep in range(plan.reps[n]):
                    entries = _ways_for(plan, n, rpc, vnetd.host_id, responders, ns_ip,
                                        before.host_id if before else None, res,
                                        quiet.host_id)
                    shift = rep % len(entries)
                    for label, prefix, plug, unplug in entries[shift:] + entries[:shift]:
                        names = ways.tap_names(prefix, n)
                        log(f"plug n={n} rep={rep + 1}: {label}")
                        server = None
                        ns = ns_ip
                        if label.rsplit(" x", 1)[0] in serving:
                            server = serving[label.rsplit(" x", 1)[0]]
                        elif "before" in label and before is not None and ns_before:
                            server, ns = before.pid, ns_before
                        elif "events off" in label:
                            server, ns = quiet.pid, ns_quiet
                        elif label.startswith("vnetd"):
                            server, ns = vnetd.pid, ns_vnetd
                        # The serving process's CPU: vnetd's or the responder's from
                        # /proc (a responder's to the ns: it spends a few ms per run), the
                        # `ip` processes' (waited-for children) otherwise.
                        cpu = (ways.children_cpu if not server else
                               partial(ways.cpu_seconds_fine, server)
                               if server in serving.values() else
                               partial(ways.cpu_seconds, server))
                        try:
                            cpu0 = cpu()
                            r = await plug(names)
                            r.server_cpu_ms = (cpu() - cpu0) * 1000 / n
                            r.note = f"rep {rep + 1}"
                            res.runs.append(r)
                            if not label.startswith("no-op"):
                                await asyncio.to_thread(check_plugged, ns, names)
                            if unplug is not None:
                                cpu0 = cpu()
                                u = await unplug(names)
                                u.server_cpu_ms = (cpu() - cpu0) * 1000 / n
                                u.note = f"rep {rep + 1}" + (f"; {u.note}" if u.note else "")
                                res.runs.append(u)
                        except (ways.WayError, TimeoutError) as exc:
                            # Reported, not hidden: the table shows no figure for it.
                            res.notes.append(f"FAILED {label} n={n} rep {rep + 1}: {exc}"[:500])
                            log(f"FAILED {label} n={n}: {exc}")
                        finally:
                            await asyncio.to_thread(clean, ns)
            await client_check(env, rpc, [resp for resp in responders
                                          if resp.way in plan.client_check_responders],
                               max(plan.sizes), plan.client_check_reps, res)
    finally:
        for spy in daemons_spy:
            spy.send_signal(2)
            await asyncio.to_thread(spy.wait)
        for resp in responders:
            await resp.stop()
        for d in daemons:
            await d.stop()
        for ns in spaces:
            env.del_ns(ns)
        if before_dir is not None:
            subprocess.run(["rm", "-rf", str(before_dir)], check=False)


Step = Callable[[list[str]], Awaitable[Run]]


async def client_check(env: Env, rpc: LeanRpc, responders: list[Responder], n: int,
                       reps: int, res: Results) -> None:
    """Is the load client the bottleneck? Each no-op responder, 64 in flight, driven by
    this process's client and by two client processes (32 each), side by side, `reps`
    times (responders and the 1/2 order rotated): if two processes do not reach a
    higher figure, one client is not what limits the figures. The fastest responder is
    the one a slow client would cap first. Besides the responder's CPU per job, the
    client's and the broker's (where its pid is known)."""
    n = max(n, 1000)  # long enough that the processes' start skew is small beside it
    broker = events.broker_pid(env.workdir)
    runs: dict[tuple[str, int], list[Run]] = {}
    skews: dict[str, list[float]] = {}
    for rep in range(reps):
        shift = rep % max(len(responders), 1)
        for r in responders[shift:] + responders[:shift]:
            for clients in ((1, 2) if rep % 2 == 0 else (2, 1)):
                log(f"client check rep {rep + 1}: {r.label}, {clients} client process(es)")
                cpu0 = _cpu(r.proc.pid, broker)
                if clients == 1:
                    t0 = time.process_time()
                    run_ = await ways.noop_jobs(rpc, r.host_id, "plug", ways.tap_names("z", n),
                                                64)
                    client_cpu = time.process_time() - t0
                else:
                    run_, skew, client_cpu = await _two_clients(env, r.host_id, n)
                    skews.setdefault(r.way, []).append(skew)
                server, broker_cpu = (b - a for a, b in zip(cpu0, _cpu(r.proc.pid, broker),
                                                            strict=True))
                run_.way = (f"{r.label} x64, {clients} client process"
                            + ("es" if clients > 1 else ""))
                run_.note = f"client check, rep {rep + 1}"
                run_.server_cpu_ms = server * 1000 / run_.n
                run_.client_cpu_ms = client_cpu * 1000 / run_.n
                run_.broker_cpu_ms = broker_cpu * 1000 / run_.n if broker else None
                res.runs.append(run_)
                runs.setdefault((r.way, clients), []).append(run_)
    for r in responders:
        one, two = runs[(r.way, 1)], runs[(r.way, 2)]
        one_ops = statistics.median(x.ops_per_s for x in one)
        two_ops = statistics.median(x.ops_per_s for x in two)
        ratio = two_ops / one_ops if one_ops else 0.0
        # The processes' start skew counts as idle time: beyond 10% of a run, no verdict.
        conclusive = all(sk <= 0.1 * x.seconds for sk, x in zip(skews[r.way], two, strict=True))
        res.client_check[r.way] = {
            "responder": r.label, "n": n, "reps": len(one),
            "one_process_ops_per_s": round(one_ops, 1),
            "two_processes_ops_per_s": round(two_ops, 1),
            "start_skew_ms": round(max(skews[r.way]) * 1000, 1),
            "ratio": round(ratio, 2), "conclusive": conclusive,
            "client_is_bottleneck": ratio > 1.1 if conclusive else None}
        log(f"client check {r.label}: {res.client_check[r.way]}")


def _cpu(pid: int, broker: int | None) -> tuple[float, float]:
    return ways.cpu_seconds_fine(pid), ways.cpu_seconds_fine(broker) if broker else 0.0


async def _two_clients(env: Env, host_id: str, n: int) -> tuple[Run, float, float]:
    """n jobs from two client processes (n/2 each, 32 in flight each), started together
    once both are connected; the run, their start skew and their CPU seconds."""
    procs = [await asyncio.create_subprocess_exec(
        str(REPO_ROOT / ".venv" / "bin" / "python"), "-m", "bench.client", env.amqp_url,
        host_id, "tap.ensure", str(n // 2), "32", cwd=REPO_ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.wait_for(p.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise RuntimeError(f"a load client did not start: {line!r}")
        # Imported and connected: both start on the machine-wide monotonic clock.
        start_at = f"{time.perf_counter() + 0.2}\n".encode()
        outs = [json.loads(out) for out, _ in
                await asyncio.gather(*(p.communicate(start_at) for p in procs))]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    span = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    skew = max(o["start"] for o in outs) - min(o["start"] for o in outs)
    if any(o["errors"] for o in outs):
        raise ways.WayError(f"load clients: {sum(o['errors'] for o in outs)} jobs failed")
    run_ = Run("plug", "", 2 * (n // 2), span, 64,
               [x for o in outs for x in o["latencies_ms"]])
    return run_, skew, sum(o["cpu_s"] for o in outs)


def _ways_for(plan: Plan, n: int, rpc: LeanRpc, vid: str, noops: list[Responder], ns: str,
              before: str | None, res: Results,
              quiet: str) -> list[tuple[str, str, Step, Step | None]]:
    """The ways for one size; `ns` is the baselines' namespace (vnetd uses its own)."""
    seq_ok = n <= plan.sequential_unplug_max
    out: list[tuple[str, str, Step, Step | None]] = []
    prefixes = iter("pqrstuvwxyz")
    for c in plan.concurrency:
        out.append((f"vnetd x{c}", next(prefixes),
                    partial(ways.vnetd_jobs, rpc, vid, "plug", concurrency=c),
                    partial(ways.vnetd_jobs, rpc, vid, "unplug", concurrency=c)
                    if seq_ok or c > 1 else None))
    out.append(("vnetd batch", next(prefixes),
                lambda names: ways.vnetd_batch(rpc, vid, "plug", names),
                (lambda names: ways.vnetd_batch(rpc, vid, "unplug", names)) if seq_ok else None))
    out.append(("vnetd batch pipelined", next(prefixes),
                lambda names: ways.vnetd_batch(rpc, vid, "plug", names, stop_on_error=False),
                (lambda names: ways.vnetd_batch(rpc, vid, "unplug", names, stop_on_error=False))
                if seq_ok else None))
    out.append(("subprocess", next(prefixes),
                lambda names: ways.in_thread(ways.subprocess_way, ns, "plug", names),
                (lambda names: ways.in_thread(ways.subprocess_way, ns, "unplug", names))
                if seq_ok else None))

    async def ip_unplug(names: list[str]) -> Run:
        if seq_ok:
            cpu0 = ways.children_cpu()
            r = await ways.in_thread(ways.batch_way, ns, "unplug", names)
            r.server_cpu_ms = (ways.children_cpu() - cpu0) * 1000 / len(names)
            r.note = "per device"
            res.runs.append(r)
            # put them back (untimed) to time the group delete as well
            await ways.in_thread(ways.batch_way, ns, "plug", names)
        return await ways.in_thread(ways.batch_way, ns, "unplug", names, group=4243)

    out.append(("ip -batch", next(prefixes),
                lambda names: ways.in_thread(ways.batch_way, ns, "plug", names), ip_unplug))
    if before is not None:
        b = before
        out.append(("vnetd before x64", next(prefixes),
                    lambda names: _relabel(ways.vnetd_jobs(rpc, b, "plug", names, 64),
                                           "vnetd before x64"),
                    lambda names: _relabel(ways.vnetd_jobs(rpc, b, "unplug", names, 64),
                                           "vnetd before x64")))
    out.append(("vnetd events off x64", next(prefixes),
                lambda names: _relabel(ways.vnetd_jobs(rpc, quiet, "plug", names, 64),
                                       "vnetd events off x64"),
                lambda names: _relabel(ways.vnetd_jobs(rpc, quiet, "unplug", names, 64),
                                       "vnetd events off x64")))
    for r in noops:
        for c in plan.concurrency:
            out.append((f"{r.label} x{c}", "z", partial(
                ways.noop_jobs, rpc, r.host_id, "plug", concurrency=c, label=r.label), None))
    return out


async def _relabel(coro: Awaitable[Run], label: str) -> Run:
    r = await coro
    r.way = label
    return r


async def plug_existing(env: Env, plan: Plan, res: Results) -> None:
    """Plug N TAPs, 64 in flight, into namespaces that already hold 0, 1,000, 10,000
    TAPs (one daemon each, all running; counts taken in rotated order per repetition):
    a job's cost must not grow with the host. Daemon CPU per job from /proc."""
    spaces: list[str] = []
    daemons: list[tuple[int, DaemonProcess]] = []
    try:
        for count in plan.plug_existing:
            ns = env.new_ns()
            spaces.append(ns)
            await asyncio.to_thread(scale.make_links, ns, count)
            daemons.append((count, await _start_daemon(env, ns, f"existing{count}")))
        n = plan.plug_existing_n
        async with LeanRpc(env.amqp_url) as rpc:
            for _, d in daemons:
                for br in ways.bridges_for(n):
                    assert (await rpc.call(d.host_id, "bridge.ensure", {"name": br}))["ok"]
                warm = ways.tap_names("w", 20)
                await ways.vnetd_jobs(rpc, d.host_id, "plug", warm, 4)
                await ways.vnetd_jobs(rpc, d.host_id, "unplug", warm, 4)
            for rep in range(plan.plug_existing_reps):
                shift = rep % len(daemons)
                for count, d in daemons[shift:] + daemons[:shift]:
                    names = ways.tap_names("p", n)
                    log(f"plug with {count} existing interfaces, rep {rep + 1}")
                    cpu0 = ways.cpu_seconds(d.pid)
                    r = await ways.vnetd_jobs(rpc, d.host_id, "plug", names, 64)
                    r.server_cpu_ms = (ways.cpu_seconds(d.pid) - cpu0) * 1000 / n
                    r.way, r.note = f"vnetd jobs x64, {count} existing", f"rep {rep + 1}"
                    res.runs.append(r)
                    await ways.vnetd_jobs(rpc, d.host_id, "unplug", names, 64)
    finally:
        for _, d in daemons:
            await d.stop()
        for ns in spaces:
            env.del_ns(ns)


@dataclass
class _LvSide:
    """One way of the libvirt scenario: its own libvirtd, namespace and (vnetd) daemon."""

    way: str
    ns: str
    lv: Any = None  # tests.support.libvirtd.PrivateLibvirtd
    daemon: DaemonProcess | None = None
    tree: str | None = None
    """PYTHONPATH of an older vnetd (--before)."""
    daemon_cpu: list[float] = field(default_factory=list)
    libvirtd_cpu: list[float] = field(default_factory=list)
    children_cpu: list[float] = field(default_factory=list)
    threads: dict[int, float] = field(default_factory=dict)
    """The daemon's CPU ms per cycle by thread id, summed over the repetitions."""
    steps: dict[str, list[float]] = field(default_factory=dict)
    """Milliseconds of each op of every timed cycle."""
    by_name: dict[str, float] = field(default_factory=dict)
    """The same by Python thread name (a pool's threads together), mean per rep."""


LIBVIRT_SETTLE_S = 0.5
"""Wait after a way's last cycle before its CPU is read: its watcher's reaction to the
last lifecycle events is part of its cost."""
LIBVIRT_COUNT_CYCLES = 3


async def _lv_cycles(side: _LvSide, rpc: LeanRpc, nets: list[tuple[str, str]],
                     steps: lv_bench.Steps | None = None) -> Run:
    if side.daemon is None:
        return await lv_bench.in_thread_direct(side.lv.uri, nets, steps)
    return await lv_bench.vnetd_way(rpc, side.daemon.host_id, nets, side.way, steps)


async def libvirt_scenario(env: Env, plan: Plan, res: Results) -> None:
    """define+start+destroy+undefine of a network through vnetd (and, with --before, an
    older vnetd) vs libvirt-python. Each way has a libvirtd of its own in a namespace of
    its own (bench/libvirt.py says why); ways alternate per repetition. Server CPU per
    cycle: libvirtd's, plus the daemon's for a vnetd way; calls per cycle counted from
    each libvirtd's log in a pass of their own."""
    sides = [_LvSide("vnetd", "")]
    spy: subprocess.Popen[bytes] | None = None
    before_dir = export_tree(plan.before_ref) if plan.before_ref else None
    if before_dir is not None:
        sides.append(_LvSide(f"vnetd before ({plan.before_ref})", "", tree=str(before_dir)))
    sides.append(_LvSide("libvirt-python", ""))
    try:
        for i, side in enumerate(sides):
            side.ns = env.new_ns()
            side.lv = await asyncio.to_thread(lv_bench.start_libvirtd,
                                              env.workdir / f"libvirtd-bench-{i}", side.ns)
            if side.way.startswith("vnetd"):
                side.daemon = await _start_daemon(
                    env, side.ns, f"libvirt{i}",
                    {"PYTHONPATH": side.tree} if side.tree else None,
                    libvirt={"enabled": True, "uri": side.lv.uri})
        async with LeanRpc(env.amqp_url) as rpc:
            for k, side in enumerate(sides):  # warm up, then count the calls per cycle
                await _lv_cycles(side, rpc, lv_bench.names_for(f"w{k}", 2))
                await asyncio.sleep(LIBVIRT_SETTLE_S)
                counter = lv_bench.RpcLog(side.lv)
                sub = (LeanSubscriber(env.amqp_url, side.daemon.host_id)
                       if side.daemon is not None else None)
                if sub is not None:
                    await sub.__aenter__()
                try:
                    await asyncio.to_thread(counter.on)
                    await _lv_cycles(side, rpc, lv_bench.names_for(f"c{k}",
                                                                   LIBVIRT_COUNT_CYCLES))
                    await asyncio.sleep(LIBVIRT_SETTLE_S * 2)
                    calls = await asyncio.to_thread(counter.off)
                finally:
                    if sub is not None:
                        await sub.__aexit__(None, None, None)
                if side.daemon is not None:  # the contract's own round trip, no libvirt
                    floor = []
                    for _ in range(30):
                        t = time.perf_counter()
                        await rpc.call(side.daemon.host_id, "host.health", {})
                        floor.append((time.perf_counter() - t) * 1000)
                    res.notes.append(f"host.health round trip, {side.way} (median of 30): "
                                     f"{statistics.median(floor):.2f} ms")
                if sub is not None:
                    kinds = Counter(str(json.loads(body).get("type")) for _, body in sub.received)
                    res.notes.append(f"events per cycle, {side.way}: "
                                     f"{sum(kinds.values()) / LIBVIRT_COUNT_CYCLES:g} ("
                                     + ", ".join(f"{t} {n / LIBVIRT_COUNT_CYCLES:g}"
                                                 for t, n in kinds.most_common()) + ")")
                    log(res.notes[-1])
                total = sum(calls.values()) / LIBVIRT_COUNT_CYCLES
                detail = ", ".join(f"{name} {n / LIBVIRT_COUNT_CYCLES:g}"
                                   for name, n in calls.most_common())
                res.notes.append(f"libvirt calls per cycle, {side.way}: {total:g} ({detail})")
                log(f"libvirt calls per cycle, {side.way}: {total:g} ({detail})")
            if plan.profile is not None and sides[0].daemon is not None:  # figures skewed
                spy = subprocess.Popen(
                    [str(REPO_ROOT / ".venv" / "bin" / "py-spy"), "record", "--pid",
                     str(sides[0].daemon.pid), "-f", "raw", "-r", "250", "--threads",
                     "-o", f"{plan.profile}.libvirt"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for rep in range(plan.libvirt_reps):
                order = sides[rep % len(sides):] + sides[:rep % len(sides)]
                if rep % 2:
                    order.reverse()
                for side in order:
                    k = sides.index(side)
                    nets = lv_bench.names_for(f"{k}r{rep}", plan.libvirt_n)
                    lv_pid = int((side.lv.root / "libvirtd.pid").read_text().strip())
                    pid = side.daemon.pid if side.daemon is not None else None
                    t0 = lv_bench.thread_cpu(pid) if pid else None
                    l0 = ways.cpu_seconds(lv_pid)
                    c0 = lv_bench.children_cpu(lv_pid)
                    d0 = ways.cpu_seconds(pid) if pid else 0.0
                    r = await _lv_cycles(side, rpc, nets, side.steps)
                    await asyncio.sleep(LIBVIRT_SETTLE_S)
                    lv_ms = (ways.cpu_seconds(lv_pid) - l0) * 1000 / plan.libvirt_n
                    d_ms = ((ways.cpu_seconds(pid) - d0) * 1000 / plan.libvirt_n
                            if pid else 0.0)
                    if pid and t0 is not None:
                        for tid, v in lv_bench.thread_cpu(pid).items():
                            side.threads[tid] = (side.threads.get(tid, 0.0)
                                                 + (v - t0.get(tid, 0.0)) * 1000
                                                 / plan.libvirt_n)
                    side.libvirtd_cpu.append(lv_ms)
                    side.children_cpu.append((lv_bench.children_cpu(lv_pid) - c0) * 1000
                                             / plan.libvirt_n)
                    side.daemon_cpu.append(d_ms)
                    r.server_cpu_ms = lv_ms + d_ms
                    r.note = f"rep {rep + 1}"
                    res.runs.append(r)
                    log(f"libvirt {side.way} rep {rep + 1}: {r.ops_per_s:.2f} cycles/s, "
                        f"CPU ms/cycle libvirtd {lv_ms:.1f} daemon {d_ms:.1f}")
        for side in sides:
            if side.daemon is not None and side.threads:
                names = await asyncio.to_thread(lv_bench.thread_names, side.daemon.pid)
                by_name: dict[str, float] = {}
                for tid, ms in side.threads.items():
                    name = names.get(tid, "other")
                    by_name[name] = by_name.get(name, 0.0) + ms / len(side.daemon_cpu)
                side.by_name = by_name
            if side.steps:
                res.notes.append(f"libvirt ms per op, {side.way} (median): " + ", ".join(
                    f"{op.split('.')[1]} {statistics.median(v):.1f}"
                    for op, v in side.steps.items()))
            if side.daemon is not None:  # the daemon's own time per job, from its log
                jobs = lv_bench.job_durations(side.daemon.log_text())
                res.notes.append(f"libvirt job duration in the daemon, {side.way} (median ms, "
                                 "reply confirmed included): " + ", ".join(
                                     f"{op.split('.')[1]} {statistics.median(v):.1f}"
                                     for op, v in jobs.items() if op in lv_bench.OPS))
            if side.libvirtd_cpu:
                res.notes.append(
                    f"libvirt CPU ms per cycle, {side.way} (median of reps): libvirtd "
                    f"{statistics.median(side.libvirtd_cpu):.1f} (its iptables runs, not "
                    f"counted: {statistics.median(side.children_cpu):.1f}), daemon "
                    f"{statistics.median(side.daemon_cpu):.1f}"
                    + ("" if not side.by_name else "; daemon by thread (mean): " + ", ".join(
                        f"{name} {ms:.1f}"
                        for name, ms in sorted(side.by_name.items(), key=lambda kv: -kv[1]))))
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            await asyncio.to_thread(spy.wait, 30)
        for side in sides:
            if side.daemon is not None:
                await side.daemon.stop()
            if side.lv is not None:
                await asyncio.to_thread(side.lv.kill)
            if side.ns:
                env.del_ns(side.ns)
        if before_dir is not None:
            subprocess.run(["rm", "-rf", str(before_dir)], check=False)


async def publisher_scenario(env: Env, plan: Plan, res: Results) -> None:
    """The EventBus + EventPublisher alone (bench/publisher.py, a process each run),
    current tree and, with --before, the older one, alternating."""
    trees: list[tuple[str, str]] = [("current", env.daemon_env.get("PYTHONPATH",
                                                                   str(REPO_ROOT)))]
    before_dir = export_tree(plan.before_ref) if plan.before_ref else None
    if before_dir is not None:
        trees.append((f"before ({plan.before_ref})", str(before_dir)))
    # Each tree's vnetd under this tree's harness: a directory holding only a `vnetd`
    # link is the working directory, which `python -m` puts first on sys.path (with
    # cwd=REPO_ROOT both runs imported the current vnetd, whatever PYTHONPATH said).
    shims: list[str] = []
    try:
        for rep in range(plan.publisher_reps):
            for label, tree in (trees if rep % 2 == 0 else trees[::-1]):
                shim = tempfile.mkdtemp(prefix="vnetd-pub-")
                shims.append(shim)
                os.symlink(os.path.join(tree, "vnetd"), os.path.join(shim, "vnetd"))
                proc = await asyncio.to_thread(
                    subprocess.run, [str(REPO_ROOT / ".venv" / "bin" / "python"), "-m",
                                     "bench.publisher", env.amqp_url, str(plan.publisher_n)],
                    capture_output=True, text=True, timeout=600, cwd=shim,
                    env={**os.environ, "PYTHONPATH": f"{shim}:{REPO_ROOT}"})
                if proc.returncode != 0:
                    res.notes.append(f"publisher {label} failed: {proc.stderr[-300:]}")
                    continue
                row = {"vnetd": label, "rep": rep + 1, **json.loads(proc.stdout)}
                res.publisher.append(row)
                log(f"publisher: {row}")
    finally:
        for shim in shims:
            subprocess.run(["rm", "-rf", shim], check=False)
        if before_dir is not None:
            subprocess.run(["rm", "-rf", str(before_dir)], check=False)


async def events_scenario(env: Env, plan: Plan, res: Results) -> None:
    """Each rate measured on the current vnetd and, with --before, on the older one right
    after it (order alternating between rates): before/after figures side by side."""
    spaces: list[str] = []
    daemons: list[tuple[str, DaemonProcess]] = []
    before_dir = None
    try:
        ns = env.new_ns()
        spaces.append(ns)
        await asyncio.to_thread(events.make_taps, ns)
        daemons.append(("current", await _start_daemon(env, ns, "events")))
        if plan.before_ref:
            before_dir = export_tree(plan.before_ref)
            ns_b = env.new_ns()
            spaces.append(ns_b)
            await asyncio.to_thread(events.make_taps, ns_b)
            daemons.append((f"before ({plan.before_ref})", await _start_daemon(
                env, ns_b, "events-before", {"PYTHONPATH": str(before_dir)},
                minimal_config=True)))
        await asyncio.sleep(1.0)  # the watchers' first sync
        broker = events.broker_pid(env.workdir)
        subs = [LeanSubscriber(env.amqp_url, d.host_id) for _, d in daemons]
        for sub in subs:
            await sub.__aenter__()
        try:
            for i, rate in enumerate(plan.event_rates):
                order = list(range(len(daemons)))
                if i % 2:
                    order.reverse()
                for k in order:
                    label, d = daemons[k]
                    row = await events.measure_one(d, env.amqp_url, rate,
                                                   plan.event_seconds, subs[k], broker)
                    row["vnetd"] = label
                    res.events.append(row)
                    log(f"events: {row}")
            if plan.event_checks:
                res.events_ceiling = await events.checks(daemons[0][1], env.amqp_url, broker,
                                                         plan.event_seconds, subs[0])
                log(f"events ceiling: {res.events_ceiling}")
        finally:
            for sub in subs:
                await sub.__aexit__(None, None, None)
    finally:
        for _, d in daemons:
            await d.stop()
        for ns in spaces:
            env.del_ns(ns)
        if before_dir is not None:
            subprocess.run(["rm", "-rf", str(before_dir)], check=False)


async def scale_scenario(env: Env, plan: Plan, res: Results) -> None:
    for count in plan.scale_links:
        ns = env.new_ns()
        try:
            t0 = time.perf_counter()
            await asyncio.to_thread(scale.make_links, ns, count)
            log(f"scale: {count} links made in {time.perf_counter() - t0:.1f}s")
            m = await scale.measure(ns, env.amqp_url, f"b-{env.suffix}-scale{count}",
                                    env.workdir / "daemons" / f"scale{count}", env.daemon_env)
            m["existing_links"] = count
            res.scale.append(m)
            log(f"scale {count}: {m}")
        finally:
            env.del_ns(ns)


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                          text=True, check=False).stdout.strip()


def machine() -> dict[str, Any]:
    return {
        "kernel": platform.release(), "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(), "python": platform.python_version(),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "vnetd", "bench")),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def availability(res: Results) -> bool:
    """Record what cannot be measured; True when the event stream can be."""
    has_events = bool(_git("log", "--oneline", "-1", "--", "vnetd/watchers/netlink.py"))
    if not has_events:
        res.unavailable["events"] = (
            f"{NOT_AVAILABLE}: the event stream (vnetd/watchers/netlink.py) has not landed "
            "on main yet")
    has_libvirt = bool(_git("log", "--oneline", "-1", "--", "tests/support/libvirtd.py"))
    res.unavailable["libvirt"] = (
        f"{NOT_AVAILABLE}: " + ("the libvirt ops and the private-libvirtd fixture landed "
                                "during this work; this benchmark has no scenario for them "
                                "yet" if has_libvirt else
                                "the libvirt ops and the private-libvirtd fixture have not "
                                "landed on main yet"))
    return has_events


async def run_all(env: Env, plan: Plan, mode: str, only: str | None = None) -> Results:
    res = Results(mode=mode, meta=machine())
    if only == "events":
        await publisher_scenario(env, plan, res)
        await events_scenario(env, plan, res)
        return res
    if only == "libvirt":
        await libvirt_scenario(env, plan, res)
        return res
    t0 = time.perf_counter()
    if only == "plug":
        await plug_unplug(env, plan, res)
        res.meta["loadavg_end"] = os.getloadavg()
        res.meta["seconds"] = round(time.perf_counter() - t0, 1)
        return res
    with_events = availability(res)
    if with_events:
        try:
            await publisher_scenario(env, plan, res)
            await events_scenario(env, plan, res)
        except Exception as exc:  # report it, measure the rest
            res.unavailable["events"] = f"failed: {type(exc).__name__}: {exc}"[:400]
            log(f"events scenario failed: {exc!r}")
    await plug_unplug(env, plan, res)
    await plug_existing(env, plan, res)
    try:
        await libvirt_scenario(env, plan, res)
        res.unavailable.pop("libvirt", None)
    except Exception as exc:  # report it, measure the rest
        res.unavailable["libvirt"] = f"failed: {type(exc).__name__}: {exc}"[:400]
        log(f"libvirt scenario failed: {exc!r}")
    await scale_scenario(env, plan, res)
    res.meta["loadavg_end"] = os.getloadavg()
    res.meta["seconds"] = round(time.perf_counter() - t0, 1)
    return res
