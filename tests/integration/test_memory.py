"""Resident memory of the daemon: idle, and owning 5,000 TAPs (created through the contract).

Prints the figures and records them in $VNETD_LAB_DIR/memory.json. The bound
is loose on purpose (a leak or a per-TAP blow-up fails it, noise does not).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from tests.conftest import StartDaemon
from tests.support import netns as netns_mod
from tests.support.env import Lab
from tests.support.rpc import RawRpc

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

TAPS = 5000
BATCH = 500


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_resident_memory_idle_and_with_5000_taps(
        lab: Lab, start_daemon: StartDaemon, netns: str, amqp_url: str) -> None:
    with socket.socket() as s:  # metrics on, as in production monitoring
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    d = await start_daemon(netns, metrics={"enabled": True, "port": port})
    await asyncio.sleep(3)
    idle = rss_kib(d.pid)
    started = time.monotonic()
    async with RawRpc(amqp_url) as rpc:
        for first in range(0, TAPS, BATCH):
            batch = {"commands": [{"op": "tap.ensure", "args": {"name": f"mem{i}"}}
                                  for i in range(first, first + BATCH)]}
            reply = await rpc.call(d.host_id, "batch", batch, timeout=300)
            assert reply["ok"] and reply["result"]["failed"] == 0, reply
        took = time.monotonic() - started
        owned = await rpc.call(d.host_id, "link.list", {"owned_only": True}, timeout=120)
        assert owned["ok"]
        assert sum(1 for x in owned["result"]["links"] if x["kind"] == "tap") == TAPS
    await asyncio.sleep(5)  # metrics refresh and event publishing settle
    loaded = rss_kib(d.pid)
    kernel = len(await netns_mod.aip_json(netns, "link", "show"))
    figures = {"idle_rss_mib": round(idle / 1024, 1), "rss_5000_taps_mib": round(loaded / 1024, 1),
               "per_tap_kib": round((loaded - idle) / TAPS, 2), "create_seconds": round(took, 1),
               "links_in_netns": kernel}
    print("MEMORY", json.dumps(figures))
    (lab.dir / "memory.json").write_text(json.dumps(figures))
    assert kernel >= TAPS
    assert loaded - idle < 200 * 1024, figures  # under 40 KiB per owned TAP
    assert await d.stop(timeout=60) == 0
