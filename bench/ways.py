"""The ways to plug and unplug N TAPs that the benchmark compares, each measured alike.

Every way gets the same namespace layout (bridges made by vnetd beforehand, at most
1,000 ports each) and returns a `Run`: wall time for all N, and per-operation
latencies where the way has operations of its own (a job, a subprocess).
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

PORTS_PER_BRIDGE = 1000


class Rpc(Protocol):
    """The load client (bench.client.LeanRpc; tests.support.rpc.RawRpc fits too)."""

    async def call(self, host_id: str, op: str, args: dict[str, Any],
                   timeout: float = ...) -> dict[str, Any]: ...


@dataclass
class Run:
    scenario: str  # "plug" | "unplug"
    way: str
    n: int
    seconds: float
    concurrency: int = 1
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    note: str = ""
    server_cpu_ms: float | None = None
    """CPU time (user+system) the serving process (vnetd or the no-op responder) spent
    per operation during the run, where there is one."""
    client_cpu_ms: float | None = None
    """The load client's CPU time per operation (the load client check only)."""
    broker_cpu_ms: float | None = None
    """The broker's CPU time per operation (the load client check only)."""

    @property
    def ops_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, round(q / 100 * (len(data) - 1)))]

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("latencies_ms")
        out.update(ops_per_s=round(self.ops_per_s, 1),
                   p50_ms=_r(self.percentile(50)), p99_ms=_r(self.percentile(99)),
                   mean_ms=_r(statistics.fmean(self.latencies_ms)) if self.latencies_ms
                   else None)
        return out


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process and all its threads so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds_fine(pid: int) -> float:
    """CPU time on the CPU of a process's live threads, to the nanosecond (schedstat):
    for the long-lived single-purpose processes (no-op responders, the broker) whose
    few milliseconds per run the clock ticks of /proc/<pid>/stat cannot resolve. A
    thread that ended during the run is not counted (cpu_seconds counts it)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):  # the thread ended meanwhile
            continue
    return total / 1e9


def children_cpu() -> float:
    """User+system CPU time of this process's finished, waited-for children (the `ip`
    processes of the baselines)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def bridge_of(i: int) -> str:
    return f"bbr{i // PORTS_PER_BRIDGE}"


def bridges_for(n: int) -> list[str]:
    return [f"bbr{k}" for k in range((n + PORTS_PER_BRIDGE - 1) // PORTS_PER_BRIDGE)]


def tap_names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


class WayError(RuntimeError):
    pass


# ------------------------------------------------------------------ RPC (vnetd, no-op)
async def _jobs(rpc: Rpc, host_id: str, requests: Sequence[tuple[str, dict[str, Any]]],
                concurrency: int, timeout: float) -> tuple[float, list[float], int, Any]:
    latencies: list[float] = []
    errors = 0
    first_error: Any = None
    it = iter(requests)

    async def worker() -> None:
        nonlocal errors, first_error
        for op, args in it:
            t0 = time.perf_counter()
            reply = await rpc.call(host_id, op, args, timeout=timeout)
            latencies.append((time.perf_counter() - t0) * 1000)
            if reply.get("ok") is not True:
                errors += 1
                first_error = first_error or reply

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, latencies, errors, first_error


async def vnetd_jobs(rpc: Rpc, host_id: str, scenario: str, names: list[str],
                     concurrency: int) -> Run:
    if scenario == "plug":
        reqs = [("tap.ensure", {"name": name, "bridge": bridge_of(i)})
                for i, name in enumerate(names)]
    else:
        reqs = [("tap.delete", {"name": name}) for name in names]
    seconds, lat, errors, first = await _jobs(rpc, host_id, reqs, concurrency, 120.0)
    if errors:
        raise WayError(f"vnetd {scenario}: {errors} jobs failed, first: {first}")
    return Run(scenario, f"vnetd jobs x{concurrency}", len(names), seconds, concurrency, lat)


async def noop_jobs(rpc: Rpc, host_id: str, scenario: str, names: list[str],
                    concurrency: int, label: str = "no-op responder") -> Run:
    op = "tap.ensure" if scenario == "plug" else "tap.delete"
    reqs = [(op, {"name": name, "bridge": bridge_of(i)}) for i, name in enumerate(names)]
    seconds, lat, errors, first = await _jobs(rpc, host_id, reqs, concurrency, 60.0)
    if errors:
        raise WayError(f"{label}: {errors} failed, first: {first}")
    return Run(scenario, f"{label} x{concurrency}", len(names), seconds, concurrency, lat)


async def vnetd_batch(rpc: Rpc, host_id: str, scenario: str, names: list[str],
                      stop_on_error: bool = True) -> Run:
    """One batch job. stop_on_error (like `ip -batch`) runs the commands one at a
    time; without it the daemon overlaps independent commands (like `ip -batch -force`
    it goes on after a failure)."""
    if scenario == "plug":
        cmds = [{"op": "tap.ensure", "args": {"name": name, "bridge": bridge_of(i)}}
                for i, name in enumerate(names)]
    else:
        cmds = [{"op": "tap.delete", "args": {"name": name}} for name in names]
    t0 = time.perf_counter()
    reply = await rpc.call(host_id, "batch", {"commands": cmds, "stop_on_error": stop_on_error},
                           timeout=600.0)
    seconds = time.perf_counter() - t0
    result = reply.get("result") or {}
    if reply.get("ok") is not True or result.get("failed") or result.get("completed") != len(
            names):
        raise WayError(f"vnetd batch {scenario}: {str(reply)[:500]}")
    way = "vnetd one batch" if stop_on_error else "vnetd one batch, pipelined"
    return Run(scenario, way, len(names), seconds, 1, [seconds * 1000])


# ------------------------------------------------------------------ ip, the usual ways
def _ip(ns: str, *args: str) -> None:
    proc = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise WayError(f"ip -n {ns} {' '.join(args)}: {proc.stderr.strip()}")


def subprocess_way(ns: str, scenario: str, names: list[str]) -> Run:
    """The tutorial way: one `ip` process per step, one TAP after the other."""
    lat: list[float] = []
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        t = time.perf_counter()
        if scenario == "plug":
            _ip(ns, "tuntap", "add", "dev", name, "mode", "tap")
            _ip(ns, "link", "set", "dev", name, "master", bridge_of(i), "up")
        else:
            _ip(ns, "link", "del", "dev", name)
        lat.append((time.perf_counter() - t) * 1000)
    seconds = time.perf_counter() - t0
    return Run(scenario, "ip per step (subprocess)", len(names), seconds, 1, lat)


def batch_way(ns: str, scenario: str, names: list[str], *, group: int | None = None) -> Run:
    """The limit: every step in one `ip -batch` process."""
    if scenario == "plug":
        lines = [f"tuntap add dev {name} mode tap\nlink set dev {name} master {bridge_of(i)} up"
                 for i, name in enumerate(names)]
        way = "ip -batch"
    elif group is None:
        lines = [f"link del dev {name}" for name in names]
        way = "ip -batch"
    else:
        lines = [f"link set dev {name} group {group}" for name in names]
        lines.append(f"link del group {group}")
        way = "ip -batch (group delete)"
    script = "\n".join(lines) + "\n"
    t0 = time.perf_counter()
    proc = subprocess.run(["ip", "-n", ns, "-batch", "-"], input=script, capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise WayError(f"ip -batch {scenario}: {proc.stderr.strip()[:500]}")
    return Run(scenario, way, len(names), seconds, 1, [seconds * 1000])


async def in_thread(fn: Callable[..., Run], *args: Any, **kw: Any) -> Run:
    return await asyncio.to_thread(fn, *args, **kw)


Way = Callable[[str, list[str]], Awaitable[Run]]
