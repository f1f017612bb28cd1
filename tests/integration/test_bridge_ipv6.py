"""OSSN-0069 for bridges: no IPv6 address ever appears on a bridge vnetd makes, unless
`ipv6: true` asks for one.

Watched as for TAPs (test_tap_ipv6.py): an `ip monitor address` running from before
the creation of the bridges to the end (a tentative link-local address that came
and went would show there); a TAP in each bridge and a guest on it
(tests/support/tap_reader.py: it attaches so carrier comes on, which gives the
bridge carrier, and sends a router advertisement with a SLAAC prefix, which the
bridge's own IPv6 receives); `ip -6 addr` of the bridges while the guest is on. A
bridge made with `ipv6: true` is the control: the same watch must see a link-local
and a SLAAC address there, or the test could not fail. Then an existing bridge is
converged from true to false and back, with carrier (a veth port), so the address
the kernel makes or removes shows.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import netns as ns
from tests.support import wait
from tests.support.daemon import DaemonProcess
from tests.support.rpc import RawRpc, ok

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
OFF = ["v6b-default", "v6b-false"]
"""Bridges with IPv6 off: made without `ipv6`, and with `ipv6: false`."""
CONTROL = "v6b-ctl"


def _sysctl(netns: str, name: str, key: str) -> str:
    return ns.run_in(netns, "cat", f"/proc/sys/net/ipv6/conf/{name}/{key}").stdout.strip()


def _addr_gen_mode(netns: str, name: str) -> str:
    found = ns.link(netns, name)
    assert found is not None, name
    return str(found["inet6_addr_gen_mode"])


async def test_no_ipv6_address_ever_appears_on_a_bridge(rpc: RawRpc, daemon: DaemonProcess,
                                                        netns: str) -> None:
    monitor = subprocess.Popen(["ip", "-n", netns, "-o", "monitor", "address"],
                               stdout=subprocess.PIPE, text=True)
    try:
        await asyncio.sleep(0.2)  # the monitor is subscribed before the first creation
        made = {OFF[0]: await ok(rpc, daemon, "bridge.ensure", name=OFF[0]),
                OFF[1]: await ok(rpc, daemon, "bridge.ensure", name=OFF[1], ipv6=False),
                CONTROL: await ok(rpc, daemon, "bridge.ensure", name=CONTROL, ipv6=True)}
        taps = {bridge: f"v6bt{i}" for i, bridge in enumerate(made)}
        for bridge, tap in taps.items():
            await ok(rpc, daemon, "tap.ensure", name=tap, bridge=bridge)
        guest = await ns.arun_in(netns, sys.executable, str(ROOT / "tests/support/tap_reader.py"),
                                 *taps.values(), "--show", *made, timeout=60)
        seen = json.loads(guest.stdout)
        await asyncio.sleep(0.3)
        listed = {b["name"]: b for b in (await ok(rpc, daemon, "bridge.list"))["bridges"]}
    finally:
        monitor.terminate()
        lines = monitor.communicate(timeout=10)[0].splitlines()
    assert seen["carrier"] == dict.fromkeys(taps.values(), "1"), seen  # a guest was on each
    # The control: a link-local address once it had carrier, and a SLAAC one from the
    # guest's RA, which reached the bridge's own IPv6. What the watch sees when it is on.
    control = ns.inet6(seen["addrs"][CONTROL])
    assert any(a.startswith("fe80:") for a in control), control
    assert any(a.startswith("2001:db8:1:") for a in control), control
    assert any(f" {CONTROL} " in line and "inet6" in line for line in lines), lines
    for bridge in OFF:
        assert ns.inet6(seen["addrs"][bridge]) == [], (bridge, seen["addrs"][bridge])
        assert not [line for line in lines if f" {bridge} " in line and "inet6" in line], lines
        assert ns.inet6(ns.ip_json(netns, "-6", "addr", "show", "dev", bridge)) == []
    # The mechanism, as the kernel reports it, and as vnetd's replies report it.
    assert {b: _addr_gen_mode(netns, b) for b in made} == {
        OFF[0]: "none", OFF[1]: "none", CONTROL: "eui64"}
    assert {b: _sysctl(netns, b, "disable_ipv6") for b in made} == {
        OFF[0]: "1", OFF[1]: "1", CONTROL: "0"}
    assert {b: (made[b]["ipv6"], listed[b]["ipv6"]) for b in made} == {
        OFF[0]: (False, False), OFF[1]: (False, False), CONTROL: (True, True)}


async def test_ipv6_of_an_existing_bridge_converges(rpc: RawRpc, daemon: DaemonProcess,
                                                    netns: str) -> None:
    name = "v6b-conv"
    made = await ok(rpc, daemon, "bridge.ensure", name=name, ipv6=True)
    assert (made["ipv6"], made["created"]) == (True, True)
    # Carrier for the bridge, so that its link-local address comes and goes with IPv6:
    # a veth pair in the test's own namespace, one end a port (by hand: it is not vnetd's).
    ns.run_in(netns, "ip", "link", "add", "v6b-vport", "type", "veth", "peer", "name", "v6b-vpeer")
    ns.run_in(netns, "ip", "link", "set", "v6b-vport", "master", name, "up")
    ns.run_in(netns, "ip", "link", "set", "v6b-vpeer", "up")

    def link_local() -> list[str]:
        found = ns.inet6(ns.ip_json(netns, "-6", "addr", "show", "dev", name))
        return [a for a in found if a.startswith("fe80:")]

    await wait.until(link_local, f"a link-local address on {name} (ipv6: true)", 10, 0.05)

    off = await ok(rpc, daemon, "bridge.ensure", name=name, ipv6=False)
    assert (off["ipv6"], off["created"], off["changed"]) == (False, False, True)
    assert ns.inet6(ns.ip_json(netns, "-6", "addr", "show", "dev", name)) == []
    assert (_sysctl(netns, name, "disable_ipv6"), _addr_gen_mode(netns, name)) == ("1", "none")
    again = await ok(rpc, daemon, "bridge.ensure", name=name, ipv6=False)
    assert (again["ipv6"], again["changed"]) == (False, False)
    unset = await ok(rpc, daemon, "bridge.ensure", name=name)  # unset: left as it is
    assert (unset["ipv6"], unset["changed"]) == (False, False)

    on = await ok(rpc, daemon, "bridge.ensure", name=name, ipv6=True)
    assert (on["ipv6"], on["changed"]) == (True, True)
    assert (_sysctl(netns, name, "disable_ipv6"), _addr_gen_mode(netns, name)) == ("0", "eui64")
    await wait.until(link_local, f"the link-local address back on {name}", 10, 0.05)
    unset = await ok(rpc, daemon, "bridge.ensure", name=name)
    assert (unset["ipv6"], unset["changed"]) == (True, False)
    assert link_local()
