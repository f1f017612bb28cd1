"""OSSN-0069: no IPv6 address ever appears on the host side of a TAP vnetd makes.

Watched three ways: an `ip monitor address` running through the plug (a tentative
link-local address that came and went would show there), then a guest's side
(tests/support/tap_reader.py: attach as QEMU does so carrier comes on, send a router
advertisement with a SLAAC prefix), then `ip -6 addr` while the guest is attached.
A TAP made with `ipv6: true` is the control: the same watch must see its addresses,
or the test could not fail.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import netns as ns
from tests.support.daemon import DaemonProcess
from tests.support.rpc import RawRpc, ok

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def test_no_ipv6_address_ever_appears_on_a_tap(rpc: RawRpc, daemon: DaemonProcess,
                                                     netns: str) -> None:
    monitor = subprocess.Popen(["ip", "-n", netns, "-o", "monitor", "address"],
                               stdout=subprocess.PIPE, text=True)
    try:
        await asyncio.sleep(0.2)  # the monitor is subscribed before the first plug
        await ok(rpc, daemon, "bridge.ensure", name="v6br0", mtu=1450)
        await ok(rpc, daemon, "tap.ensure", name="v6tap0", bridge="v6br0")  # a bridge port
        await ok(rpc, daemon, "tap.ensure", name="v6tap1")  # no bridge
        await ok(rpc, daemon, "tap.ensure", name="v6tap2", bridge="v6br0", mtu=1400, up=False)
        await ok(rpc, daemon, "tap.ensure", name="v6tap2", bridge="v6br0", up=True)
        await ok(rpc, daemon, "tap.ensure", name="v6ctl", ipv6=True)  # the control
        names = ["v6tap0", "v6tap1", "v6tap2", "v6ctl"]
        for name in names[:3]:
            k = ns.link(netns, name)
            assert k is not None and "UP" in k["flags"], k
        guest = await ns.arun_in(netns, sys.executable, str(ROOT / "tests/support/tap_reader.py"),
                                 *names, timeout=60)
        seen = json.loads(guest.stdout)
        await asyncio.sleep(0.3)
    finally:
        monitor.terminate()
        lines = monitor.communicate(timeout=10)[0].splitlines()
    assert seen["carrier"] == dict.fromkeys(names, "1"), seen  # a guest was attached
    # The control got a link-local address, and a SLAAC one from the guest's RA: what
    # the watch sees when IPv6 is on.
    control = ns.inet6(seen["addrs"]["v6ctl"])
    assert any(a.startswith("fe80:") for a in control), control
    assert any(a.startswith("2001:db8:1:") for a in control), control
    assert any(" v6ctl " in line and "inet6" in line for line in lines), lines
    for name in names[:3]:
        assert ns.inet6(seen["addrs"][name]) == [], (name, seen["addrs"][name])
        assert not [line for line in lines if f" {name} " in line and "inet6" in line], lines
        after = ns.ip_json(netns, "-6", "addr", "show", "dev", name)
        assert ns.inet6(after) == [], after
    # The mechanism, as the kernel reports it: no address generation on every one; the
    # TAP without a bridge (where the host's IPv6 takes the guest's frames) also has
    # IPv6 off altogether.
    for name in names[:3]:
        assert ns.link(netns, name)["inet6_addr_gen_mode"] == "none"  # type: ignore[index]
    disabled = {name: ns.run_in(netns, "cat", f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6")
                .stdout.strip() for name in names}
    assert disabled == {"v6tap0": "0", "v6tap1": "1", "v6tap2": "0", "v6ctl": "0"}, disabled
