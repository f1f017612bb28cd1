"""Scenario 4: daemon start to READY, host.snapshot time and memory against existing links."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.lab import run
from tests.support.daemon import DaemonProcess
from tests.support.rpc import RawRpc


def make_links(ns: str, count: int) -> None:
    """`count` persistent TAPs (dummy devices are missing from this kernel)."""
    for start in range(0, count, 2000):
        script = "".join(f"tuntap add dev s{i:06d} mode tap\n"
                         for i in range(start, min(count, start + 2000)))
        run("ip", "-n", ns, "-batch", "-", input=script, timeout=600)


def _rss_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def _ready_at(log_text: str) -> float | None:
    """Wall-clock time of the daemon's `ready` log record (it follows sd_notify READY=1)."""
    for line in log_text.splitlines():
        if line.startswith("{") and '"event": "ready"' in line:
            stamp = json.loads(line)["timestamp"]
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return None


async def measure(ns: str, amqp_url: str, host_id: str, workdir: Path,
                  extra_env: dict[str, str], snapshots: int = 3) -> dict[str, Any]:
    """Start `vnetd run` for `ns`; time to its `ready` record, then snapshots and memory."""
    d = DaemonProcess(host_id=host_id, amqp_url=amqp_url, netns=ns, workdir=workdir,
                      env=extra_env, ready_timeout=120)
    spawned = time.time()
    await d.start()
    try:
        ready_at = _ready_at(d.log_text())
        if ready_at is None:
            raise RuntimeError(f"vnetd for {ns} logged no ready record")
        times = []
        links = 0
        async with RawRpc(amqp_url) as rpc:
            for _ in range(snapshots):
                t = time.perf_counter()
                reply = await rpc.call(host_id, "host.snapshot", {}, timeout=120)
                times.append((time.perf_counter() - t) * 1000)
                assert reply.get("ok") is True, reply
                links = len(reply["result"]["links"])
        mem = _rss_kb(d.pid)
        return {"ready_s": round(ready_at - spawned, 3),
                "snapshot_ms": round(sorted(times)[len(times) // 2], 1),
                "snapshot_links": links, "rss_mb": round(mem["VmRSS"] / 1024, 1),
                "peak_rss_mb": round(mem["VmHWM"] / 1024, 1)}
    finally:
        await d.stop()
