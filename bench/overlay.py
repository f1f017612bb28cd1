"""Overlay figures: `python -m bench.overlay [--hosts 10] [--segments 100] [--entries 1000]`.

One run, every figure beside its baseline, on a simulated fleet (tests/support/fleet.py):
an underlay namespace, N host namespaces with one vnetd each, one broker.

1. A segment on all hosts: from the jobs sent until every guest pair pings
   (one guest per host), against the same wiring done by `ip -batch` + `bridge
   -batch` in every host namespace at once (what a script-driven agent does).
2. `--segments` segments on all hosts (jobs sent until all replied, kernel checked).
3. One `fdb.converge` of `--entries` unicast entries vs `bridge -batch` adding the
   same entries to a second VXLAN device (and removing them), median of 5;
   ratio = bridge time / vnetd time (goal >= 0.5).
4. Ping loss (every 50 ms) across a daemon SIGKILL + restart, and across a
   full-state re-send to every host (goal 0).

`--entries-only --before DIR` measures figure 3 alone, old code beside new in one
run: a second host runs a vnetd from the checkout DIR (e.g. `git worktree add
--detach /tmp/before main`), and every repetition times, interleaved, this vnetd,
that one and `bridge -batch` (results in bench/results/overlay-ab.{json,md}).

Outside the lab it makes one (as `python -m bench` does) and re-runs itself inside.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import lab as lab_mod
from bench import report
from tests.support import fleet as f
from tests.support.daemon import DaemonProcess
from tests.support.env import REPO_ROOT
from tests.support.netns import run_in
from vnetd.client import VnetClient
from vnetd.fleet import Guest, Host, Segment, ensure_segment

OUT = REPO_ROOT / "bench" / "results"
REPS = 5


def log(msg: str) -> None:
    print(f"[overlay] {msg}", file=sys.stderr, flush=True)


async def start_daemons(fl: f.Fleet, lab: lab_mod.Lab,
                        code: dict[int, Path] | None = None, count: int | None = None) -> None:
    """One vnetd per host (the first `count`); `code` maps a host's index to another
    checkout to run there."""
    async def one(h: f.FleetHost) -> DaemonProcess:
        other = (code or {}).get(h.index)
        # PYTHONPATH comes before the venv's editable install on the import path.
        env = {"PYTHONPATH": str(other)} if other is not None else None
        d = DaemonProcess(host_id=f"ov-{lab.suffix}-{h.index}", amqp_url=lab.amqp_url,
                          netns=h.netns, workdir=lab.dir / "daemons" / f"ov{h.index}",
                          extra={"policy": {"attachable": [f.GUEST_PORTS], "protected": ["lo"]}},
                          env=env, ready_timeout=120)
        await d.start()
        return d
    hosts = fl.hosts[:count]
    for h, d in zip(hosts, await asyncio.gather(*(one(h) for h in hosts)), strict=True):
        h.daemon = d


async def ping_once(g: f.Guest, target: str, deadline: float) -> float:
    """Seconds until one ping from g to target is answered (retried until the deadline)."""
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", g.netns, "ping", "-n", "-q", "-c", "1", "-W", "1", target,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        if await proc.wait() == 0:
            return time.perf_counter() - start
    raise TimeoutError(f"{g.ip} never reached {target}")


async def all_pairs_ping(guests: list[f.Guest], timeout: float = 60.0) -> None:
    deadline = time.perf_counter() + timeout

    async def from_one(g: f.Guest) -> None:
        for t in guests:
            if t is not g:
                await ping_once(g, t.ip, deadline)
    await asyncio.gather(*(from_one(g) for g in guests))


def hosts_for(fl: f.Fleet, guests: list[f.Guest]) -> list[Host]:
    return [Host(h.host_id, h.address, guests=tuple(Guest(g.mac, g.ip) for g in guests
                                                     if g.host is h)) for h in fl.hosts]


async def call_ok(client: VnetClient, host: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
    reply = await client.call(host, op, args, timeout=120)
    if not reply.ok:
        raise RuntimeError(f"{op} on {host}: {reply.error}")
    return reply.result


def batch_in(ns: str, tool: str, lines: list[str]) -> float:
    """Seconds `ip -batch` / `bridge -batch` takes for `lines` inside `ns`."""
    with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as fh:
        fh.write("\n".join(lines) + "\n")
        path = fh.name
    try:
        t0 = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", ns, tool, "-batch", path], check=True,
                       capture_output=True, text=True, timeout=120)
        return time.perf_counter() - t0
    finally:
        os.unlink(path)


# ------------------------------------------------------------------ 1. one segment
async def one_segment(fl: f.Fleet, client: VnetClient) -> dict[str, Any]:
    seg = Segment(vni=1000, bridge="br-s", vxlan="vx-s", proxy=True)
    guests = [fl.add_guest(h, f"10.99.0.{h.index}", f"52:54:00:99:00:{h.index:02x}")
              for h in fl.hosts]
    # Bridges and guest ports first: the figure is the segment's own convergence.
    for g in guests:
        await call_ok(client, g.host.host_id, "bridge.ensure", {"name": seg.bridge})
        await call_ok(client, g.host.host_id, "port.attach", {"name": g.port,
                                                               "bridge": seg.bridge})
    t0 = time.perf_counter()
    results = await ensure_segment(client, seg, hosts_for(fl, guests), timeout=120)
    t_jobs = time.perf_counter() - t0
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    await all_pairs_ping(guests)
    t_ping = time.perf_counter() - t0
    # Baseline: the same segment wired by ip/bridge -batch in every host at once.
    base_guests = [fl.add_guest(h, f"10.98.0.{h.index}", f"52:54:00:98:00:{h.index:02x}")
                   for h in fl.hosts]
    for g in base_guests:
        f.ip("-n", g.host.netns, "link", "add", "br-base", "type", "bridge")
        f.ip("-n", g.host.netns, "link", "set", "br-base", "up")
        f.ip("-n", g.host.netns, "link", "set", g.port, "master", "br-base")

    def wire(h: f.FleetHost) -> None:
        others = [x for x in base_guests if x.host is not h]
        batch_in(h.netns, "ip", [
            f"link add vx-base type vxlan id 1001 local {h.address} dstport 4789 nolearning "
            "proxy", "link set vx-base master br-base up"]
            + [f"neigh add {o.ip} lladdr {o.mac} dev vx-base nud permanent" for o in others])
        batch_in(h.netns, "bridge",
                 [f"fdb append 00:00:00:00:00:00 dev vx-base dst {o.host.address} self "
                  "permanent" for o in others]
                 + [f"fdb add {o.mac} dev vx-base dst {o.host.address} self permanent"
                    for o in others])
    t1 = time.perf_counter()
    await asyncio.gather(*(asyncio.to_thread(wire, h) for h in fl.hosts))
    b_jobs = time.perf_counter() - t1
    await all_pairs_ping(base_guests)
    b_ping = time.perf_counter() - t1
    return {"hosts": len(fl.hosts), "pairs": len(guests) * (len(guests) - 1),
            "vnetd_jobs_s": t_jobs, "vnetd_until_all_pairs_ping_s": t_ping,
            "baseline_batch_s": b_jobs, "baseline_until_all_pairs_ping_s": b_ping,
            "seg": seg, "guests": guests}


# ------------------------------------------------------------------ 2. many segments
async def many_segments(fl: f.Fleet, client: VnetClient, n: int) -> dict[str, Any]:
    hosts = hosts_for(fl, [])
    segs = [Segment(vni=2000 + i, bridge=f"brm{i}", vxlan=f"vxm{i}", unicast=False)
            for i in range(n)]
    t0 = time.perf_counter()
    results = await asyncio.gather(*(ensure_segment(client, s, hosts, timeout=300)
                                     for s in segs))
    took = time.perf_counter() - t0
    bad = [r for rs in results for r in rs if not r.ok]
    assert not bad, bad[:3]
    h = fl.hosts[0]
    rows = run_in(h.netns, "bridge", "fdb", "show").stdout.count("00:00:00:00:00:00 dev vxm")
    assert rows == n * (len(fl.hosts) - 1), rows
    return {"segments": n, "hosts": len(fl.hosts), "jobs": n * len(fl.hosts), "seconds": took,
            "jobs_per_s": n * len(fl.hosts) / took, "flood_rows_on_host1": rows}


# ------------------------------------------------------------------ 3. 1000 entries
async def entries_vs_bridge_batch(fl: f.Fleet, client: VnetClient, n: int) -> dict[str, Any]:
    h = fl.hosts[0]
    await call_ok(client, h.host_id, "vxlan.ensure", {"name": "vx-big", "vni": 3000,
                                                       "local": h.address})
    f.ip("-n", h.netns, "link", "add", "vx-bb", "type", "vxlan", "id", "3001", "local",
         h.address, "dstport", "4789", "nolearning")
    remotes = [x.address for x in fl.hosts[1:]]
    macs = [f"52:54:01:{i >> 16 & 0xFF:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}"
            for i in range(n)]
    entries = [{"mac": m, "dst": remotes[i % len(remotes)]} for i, m in enumerate(macs)]
    add_lines = [f"fdb add {e['mac']} dev vx-bb dst {e['dst']} self permanent" for e in entries]
    del_lines = [f"fdb del {e['mac']} dev vx-bb dst {e['dst']} self" for e in entries]
    v_add, v_del, v_noop, b_add, b_del = [], [], [], [], []
    for _ in range(REPS):
        t0 = time.perf_counter()
        r = await call_ok(client, h.host_id, "fdb.converge",
                          {"name": "vx-big", "remotes": remotes, "fdb": entries})
        v_add.append(time.perf_counter() - t0)
        assert r["added"]["fdb"] == n, r["added"]
        t0 = time.perf_counter()
        r = await call_ok(client, h.host_id, "fdb.converge",
                          {"name": "vx-big", "remotes": remotes, "fdb": entries})
        v_noop.append(time.perf_counter() - t0)
        assert not r["changed"]
        t0 = time.perf_counter()
        r = await call_ok(client, h.host_id, "fdb.converge",
                          {"name": "vx-big", "remotes": remotes, "fdb": []})
        v_del.append(time.perf_counter() - t0)
        assert r["removed"]["fdb"] == n
        b_add.append(batch_in(h.netns, "bridge", add_lines))
        b_del.append(batch_in(h.netns, "bridge", del_lines))
    med = statistics.median
    return {"entries": n, "reps": REPS,
            "vnetd_add_s": med(v_add), "vnetd_remove_s": med(v_del), "vnetd_noop_s": med(v_noop),
            "bridge_batch_add_s": med(b_add), "bridge_batch_remove_s": med(b_del),
            "ratio_add": med(b_add) / med(v_add), "ratio_remove": med(b_del) / med(v_del)}


# ------------------------------------------------------------------ 3b. old beside new
async def entries_ab(fl: f.Fleet, client: VnetClient, n: int, reps: int) -> dict[str, Any]:
    """Figure 3 with host 0 running this code, host 1 the `--before` checkout and host 2
    (no daemon) `bridge -batch`, so no side's namespace holds another's entries."""
    sides = {"after": fl.hosts[0], "before": fl.hosts[1]}
    # Nine remotes as in the 10-host figure (only the kernel's FDB sees them).
    remotes = [f"{f.UNDERLAY_PREFIX}{200 + i}" for i in range(9)]
    for h in sides.values():
        await call_ok(client, h.host_id, "vxlan.ensure", {"name": "vx-big", "vni": 3000,
                                                           "local": h.address})
    h0 = fl.hosts[2]
    f.ip("-n", h0.netns, "link", "add", "vx-bb", "type", "vxlan", "id", "3001", "local",
         h0.address, "dstport", "4789", "nolearning")
    macs = [f"52:54:01:{i >> 16 & 0xFF:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}"
            for i in range(n)]
    entries = [{"mac": m, "dst": remotes[i % len(remotes)]} for i, m in enumerate(macs)]
    add_lines = [f"fdb add {e['mac']} dev vx-bb dst {e['dst']} self permanent" for e in entries]
    del_lines = [f"fdb del {e['mac']} dev vx-bb dst {e['dst']} self" for e in entries]
    t: dict[str, list[float]] = {f"{side}_{what}": [] for side in (*sides, "bridge")
                                 for what in ("add", "noop", "remove")}

    async def job(side: str, what: str, fdb: list[dict[str, str]]) -> dict[str, Any]:
        t0 = time.perf_counter()
        r = await call_ok(client, sides[side].host_id, "fdb.converge",
                          {"name": "vx-big", "remotes": remotes, "fdb": fdb})
        t[f"{side}_{what}"].append(time.perf_counter() - t0)
        return r
    for rep in range(reps):
        order = ["after", "before"] if rep % 2 == 0 else ["before", "after"]
        for side in order:
            assert (await job(side, "add", entries))["added"]["fdb"] == n
        t["bridge_add"].append(batch_in(h0.netns, "bridge", add_lines))
        for side in order:
            assert not (await job(side, "noop", entries))["changed"]
        for side in order:
            assert (await job(side, "remove", []))["removed"]["fdb"] == n
        t["bridge_remove"].append(batch_in(h0.netns, "bridge", del_lines))
    med = {k: statistics.median(v) for k, v in t.items() if v}
    best = {k: min(v) for k, v in t.items() if v}
    return {"entries": n, "reps": reps, "median_s": med, "min_s": best, "samples_s": t}


def markdown_ab(r: dict[str, Any]) -> str:
    m, lo, n = r["median_s"], r["min_s"], r["entries"]
    rows = [f"# fdb.converge of {n} unicast entries, old code beside new ({r['meta']['time']}, "
            f"load {r['meta']['load'][0]:.1f} on {r['meta']['cpus']} CPUs)", "",
            f"One run, interleaved, median of {r['reps']}; ratio = bridge -batch time / vnetd "
            "time (goal >= 0.5). before: " + r["meta"]["before"], "",
            "| job | before | after | bridge -batch | ratio before | ratio after |",
            "|---|---|---|---|---|---|"]
    for label, d in (("median", m), ("fastest", lo)):
        for what in ("add", "remove"):
            b, a, k = d[f"before_{what}"], d[f"after_{what}"], d[f"bridge_{what}"]
            rows.append(f"| {what} {n}, {label} | {b * 1000:.1f} ms | {a * 1000:.1f} ms | "
                        f"{k * 1000:.1f} ms | {k / b:.2f} | {k / a:.2f} |")
        rows.append(f"| re-sent, no change, {label} | {d['before_noop'] * 1000:.1f} ms | "
                    f"{d['after_noop'] * 1000:.1f} ms | | | |")
    return "\n".join(rows) + "\n"


async def run_ab(args: argparse.Namespace) -> dict[str, Any]:
    lab = lab_mod.Lab.from_env()
    subs = lab_mod.SubNamespaces(lab)
    fl = f.Fleet(subs.new)
    try:
        fl.build(3)
        await start_daemons(fl, lab, {1: args.before}, count=2)
        async with VnetClient(lab.amqp_url) as client:
            result = await entries_ab(fl, client, args.entries, args.reps)
        before = subprocess.run(["git", "-C", str(args.before), "log", "-1", "--format=%h %s"],
                                capture_output=True, text=True, check=False).stdout.strip()
        result["meta"] = {"cpus": os.cpu_count(), "load": os.getloadavg(),
                          "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "before": f"{args.before} ({before})"}
        return result
    finally:
        for h in fl.hosts:
            if h.daemon is not None:
                await h.daemon.stop()
        subs.cleanup()


# ------------------------------------------------------------------ 4. ping loss
async def ping_loss(fl: f.Fleet, client: VnetClient, seg: Segment,
                    guests: list[f.Guest]) -> dict[str, Any]:
    g1, g2 = guests[0], guests[1]
    hosts = hosts_for(fl, guests)

    async def during(action: Any, count: int = 100) -> tuple[int, int]:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", g1.netns, "ping", "-n", "-q", "-i", "0.05", "-c", str(count),
            "-W", "1", g2.ip, stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(0.5)
        await action()
        out, _ = await proc.communicate()
        return f.ping_counts(out.decode())

    async def restart() -> None:
        await g1.host.daemon.kill()
        await g1.host.daemon.start()

    async def resend() -> None:
        rs = await ensure_segment(client, seg, hosts, timeout=120)
        assert all(r.ok and not any(r.added.values()) and not any(r.removed.values())
                   for r in rs)

    r_sent, r_recv = await during(restart)
    s_sent, s_recv = await during(resend)
    return {"restart": {"sent": r_sent, "lost": r_sent - r_recv},
            "resend": {"sent": s_sent, "lost": s_sent - s_recv}}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    lab = lab_mod.Lab.from_env()
    subs = lab_mod.SubNamespaces(lab)
    fl = f.Fleet(subs.new)
    try:
        fl.build(args.hosts)
        t0 = time.perf_counter()
        await start_daemons(fl, lab)
        log(f"{args.hosts} hosts up in {time.perf_counter() - t0:.1f}s")
        async with VnetClient(lab.amqp_url) as client:
            one = await one_segment(fl, client)
            log(f"one segment: {one['vnetd_until_all_pairs_ping_s']:.2f}s")
            loss = await ping_loss(fl, client, one.pop("seg"), one.pop("guests"))
            log(f"ping loss: {loss}")
            big = await entries_vs_bridge_batch(fl, client, args.entries)
            log(f"{args.entries} entries: ratio {big['ratio_add']:.2f}")
            many = await many_segments(fl, client, args.segments)
            log(f"{args.segments} segments: {many['seconds']:.2f}s")
        return {"one_segment": one, "many_segments": many, "entries": big, "ping_loss": loss,
                "meta": {"cpus": os.cpu_count(), "load": os.getloadavg(),
                         "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    finally:
        for h in fl.hosts:
            if h.daemon is not None:
                await h.daemon.stop()
        subs.cleanup()


def markdown(r: dict[str, Any]) -> str:
    one, many, big, loss = r["one_segment"], r["many_segments"], r["entries"], r["ping_loss"]
    return "\n".join([
        f"# Overlay figures ({r['meta']['time']}, load {r['meta']['load'][0]:.1f} on "
        f"{r['meta']['cpus']} CPUs)", "",
        "| figure | vnetd | baseline | ratio (baseline / vnetd time) |", "|---|---|---|---|",
        f"| {one['hosts']}-host segment: jobs sent until all replied | "
        f"{one['vnetd_jobs_s']:.3f} s | {one['baseline_batch_s']:.3f} s (ip+bridge -batch "
        f"in every host at once) | {one['baseline_batch_s'] / one['vnetd_jobs_s']:.2f} |",
        f"| {one['hosts']}-host segment: jobs sent until all {one['pairs']} guest pairs "
        f"ping | {one['vnetd_until_all_pairs_ping_s']:.3f} s | "
        f"{one['baseline_until_all_pairs_ping_s']:.3f} s | "
        f"{one['baseline_until_all_pairs_ping_s'] / one['vnetd_until_all_pairs_ping_s']:.2f} |",
        f"| {many['segments']} segments on {many['hosts']} hosts ({many['jobs']} batch jobs) | "
        f"{many['seconds']:.2f} s ({many['jobs_per_s']:.0f} jobs/s) | | |",
        f"| fdb.converge of {big['entries']} unicast entries, add (median of {big['reps']}) | "
        f"{big['vnetd_add_s'] * 1000:.1f} ms | {big['bridge_batch_add_s'] * 1000:.1f} ms "
        f"(bridge -batch) | {big['ratio_add']:.2f} (goal >= 0.5) |",
        f"| the same, remove all {big['entries']} | {big['vnetd_remove_s'] * 1000:.1f} ms | "
        f"{big['bridge_batch_remove_s'] * 1000:.1f} ms | {big['ratio_remove']:.2f} |",
        f"| the same job re-sent (no change) | {big['vnetd_noop_s'] * 1000:.1f} ms | | |",
        f"| ping loss across a daemon SIGKILL + restart | {loss['restart']['lost']} of "
        f"{loss['restart']['sent']} | goal 0 | |",
        f"| ping loss across a full-state re-send to every host | {loss['resend']['lost']} of "
        f"{loss['resend']['sent']} | goal 0 | |", ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overlay", description=__doc__)
    p.add_argument("--hosts", type=int, default=10)
    p.add_argument("--segments", type=int, default=100)
    p.add_argument("--entries", type=int, default=1000)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--entries-only", action="store_true",
                   help="figure 3 alone, this code beside --before's (one run, interleaved)")
    p.add_argument("--before", type=Path, help="checkout of the code to compare with")
    p.add_argument("--reps", type=int, default=9)
    args = p.parse_args(argv)
    if args.entries_only and args.before is None:
        p.error("--entries-only needs --before DIR")
    if not lab_mod.in_lab():
        with lab_mod.private_lab() as (netns, env):
            cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "bench.overlay",
                   *(sys.argv[1:] if argv is None else argv)]
            return subprocess.run(cmd, env={**os.environ, **env}, cwd=REPO_ROOT,
                                  check=False).returncode
    if args.entries_only:
        ab = asyncio.run(run_ab(args))
        sys.stdout.write(report.write_pair(args.out, "overlay-ab", ab, markdown_ab(ab)))
        return 0
    result = asyncio.run(run(args))
    sys.stdout.write(report.write_pair(args.out, "overlay", result, markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
