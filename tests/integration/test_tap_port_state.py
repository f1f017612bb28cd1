"""A TAP vnetd plugs into a bridge joins it as a port that is down until a guest
attaches: the bridge never enables it (blocking, learning, forwarding) on the way.

Why it matters: a new TAP is born with operstate "unknown", and a request that brings
it up and joins it to the bridge makes the kernel take it for a live port. The bridge
then enables its STP port at once, which queues an urgent linkwatch run, a pass under
RTNL over every device on the machine with a pending link event: with 11,000 TAPs in
another namespace each plug cost the daemon 0.6 ms more (docs/benchmark.md). vnetd
reads the new TAP before the change (rtnl_getlink settles its pending link event, so
its operstate is "down"). `bridge monitor link` sees every port state the bridge
reports; the control is a port whose TAP has carrier (a guest attached), which the
bridge must enable, so the watch can see an enabled port.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import netns as ns
from tests.support.daemon import DaemonProcess
from tests.support.rpc import RawRpc, ok

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ENABLED = ("state blocking", "state learning", "state forwarding", "state listening")


def _enabled(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if f" {name} " in f" {line} ".replace(":", " ")
            and any(state in line for state in ENABLED)]


async def test_a_plugged_tap_is_never_an_enabled_port_before_a_guest(
        rpc: RawRpc, daemon: DaemonProcess, netns: str) -> None:
    monitor = subprocess.Popen(["bridge", "-n", netns, "monitor", "link"],
                               stdout=subprocess.PIPE, text=True)
    taps = [f"pst{i}" for i in range(6)]
    try:
        await asyncio.sleep(0.2)  # subscribed before the first plug
        await ok(rpc, daemon, "bridge.ensure", name="pstbr0")
        for name in taps[:3]:  # one job each
            await ok(rpc, daemon, "tap.ensure", name=name, bridge="pstbr0")
        await ok(rpc, daemon, "batch", commands=[  # the batch path
            {"op": "tap.ensure", "args": {"name": name, "bridge": "pstbr0"}}
            for name in taps[3:]])
        await asyncio.sleep(1.5)  # the kernel's deferred link events (linkwatch: 1 s)
        before = list(taps)
        # The control: a guest attaches to one TAP (carrier on): that port is enabled.
        guest = await ns.arun_in(netns, sys.executable, str(ROOT / "tests/support/tap_reader.py"),
                                 "pst0", timeout=60)
        assert guest.returncode == 0, guest.stderr
        await asyncio.sleep(0.5)
    finally:
        monitor.terminate()
        lines = monitor.communicate(timeout=10)[0].splitlines()
    assert _enabled(lines, "pst0"), lines  # the watch sees an enabled port
    control_at = next(i for i, line in enumerate(lines) if _enabled([line], "pst0"))
    for name in before:
        assert not _enabled(lines[:control_at], name), (name, lines)
    for name in taps:
        port = ns.ip_json(netns, "-d", "link", "show", "dev", name)[0]
        assert port["master"] == "pstbr0", port
