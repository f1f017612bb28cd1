"""VXLAN segments on a simulated fleet: 3 host namespaces on an underlay, one vnetd each.

Real kernel, real broker, real daemons; guests are namespaces. The control plane
is `vnetd.fleet.ensure_segment` (the reference function), which speaks only
the contract; checks go through `ip`/`bridge`/`ping`, independently of vnetd.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.integration.events_subscriber import Subscriber
from tests.support import fleet as f
from tests.support.netns import NetnsFactory, run_in
from vnetd.client import VnetClient
from vnetd.fleet import Guest, Host, HostResult, Segment, ensure_segment

pytestmark = pytest.mark.asyncio

SEG_A = Segment(vni=100, bridge="br-a", vxlan="vx-a")
SEG_B = Segment(vni=200, bridge="br-b", vxlan="vx-b")


@pytest.fixture
async def fleet(request: pytest.FixtureRequest, netns_factory: NetnsFactory,
                start_daemon: Callable[..., Any]) -> f.Fleet:
    """3 hosts (or `parametrize("fleet", [n], indirect=True)`), one vnetd each."""
    fl = f.Fleet(netns_factory)
    fl.build(getattr(request, "param", 3))
    await fl.start_daemons(start_daemon)
    return fl


@pytest.fixture
async def client(amqp_url: str) -> AsyncIterator[VnetClient]:
    async with VnetClient(amqp_url) as c:
        yield c


def hosts_of(fl: f.Fleet, guests: list[f.Guest] | None = None,
             only: list[f.FleetHost] | None = None) -> list[Host]:
    chosen = only or fl.hosts
    return [Host(h.host_id, h.address, guests=tuple(
        Guest(g.mac, g.ip) for g in guests or [] if g.host is h)) for h in chosen]


async def attach(client: VnetClient, guest: f.Guest, bridge: str) -> None:
    reply = await client.call(guest.host.host_id, "port.attach",
                              {"name": guest.port, "bridge": bridge})
    assert reply.ok, reply.error


def all_ok(results: list[HostResult]) -> None:
    bad = [r for r in results if not r.ok]
    assert not bad, bad


async def test_guests_ping_across_hosts_and_segments_stay_isolated(
        fleet: f.Fleet, client: VnetClient) -> None:
    h1, h2, h3 = fleet.hosts
    # Same guest IPs in both segments, different MACs.
    a1 = fleet.add_guest(h1, "10.9.0.1", "52:54:00:0a:00:01")
    a2 = fleet.add_guest(h2, "10.9.0.2", "52:54:00:0a:00:02")
    b1 = fleet.add_guest(h1, "10.9.0.1", "52:54:00:0b:00:01")
    b2 = fleet.add_guest(h2, "10.9.0.2", "52:54:00:0b:00:02")
    results_a = await ensure_segment(client, SEG_A, hosts_of(fleet, [a1, a2]))
    results_b = await ensure_segment(client, SEG_B, hosts_of(fleet, [b1, b2]))
    all_ok(results_a + results_b)
    assert [r.remotes for r in results_a] == [2, 2, 2]
    for g, bridge in ((a1, "br-a"), (a2, "br-a"), (b1, "br-b"), (b2, "br-b")):
        await attach(client, g, bridge)
    # The kernel agrees: VNI, no learning, the flood list, vnetd's unicast entries.
    vx = f.run_in(h1.netns, "ip", "-j", "-d", "link", "show", "vx-a").stdout
    assert '"id":100' in vx.replace(" ", "") and '"learning":false' in vx.replace(" ", "")
    assert f.remotes(h1.netns, "vx-a") == {h2.address, h3.address}
    unicast = {r["mac"]: r["dst"] for r in f.fdb_rows(h1.netns, "vx-a")
               if r["mac"] != "00:00:00:00:00:00"}
    assert unicast == {a2.mac: h2.address}

    # Segment B's twin of the target sees none of segment A's ARP or ICMP.
    with f.Capture(b2.netns, "eth0", "arp or icmp") as twin, \
            f.Capture(a2.netns, "eth0", "arp or icmp") as target:
        sent, received = f.ping(a1, "10.9.0.2", count=5, interval=0.1)
    assert received == sent == 5
    assert twin.lines == []
    assert sum("ICMP echo request" in line for line in target.lines) == 5, target.lines
    neigh = run_in(a1.netns, "ip", "-j", "neigh", "show", "10.9.0.2").stdout
    assert a2.mac in neigh and b2.mac not in neigh
    sent, received = f.ping(b1, "10.9.0.2", count=3, interval=0.1)
    assert received == sent
    neigh = run_in(b1.netns, "ip", "-j", "neigh", "show", "10.9.0.2").stdout
    assert b2.mac in neigh

    # Idempotent: the same full state again changes nothing.
    again = await ensure_segment(client, SEG_A, hosts_of(fleet, [a1, a2]))
    all_ok(again)
    assert all(not r.created and not any(r.added.values()) and not any(r.removed.values())
               for r in again)
    # The views: link.list, bridge.list.
    links = (await client.call(h1.host_id, "link.list", {"kind": "vxlan"})).result["links"]
    by_name = {v["name"]: v for v in links}
    assert by_name["vx-a"]["vxlan"]["vni"] == 100 and by_name["vx-a"]["vxlan"]["remotes"] == 2
    assert by_name["vx-a"]["master"] == "br-a" and by_name["vx-a"]["owned"]
    bridges = (await client.call(h1.host_id, "bridge.list")).result["bridges"]
    br_a = next(b for b in bridges if b["name"] == "br-a")
    assert br_a["vxlan"][0]["vni"] == 100


async def test_removing_a_host_stops_flooding_to_it(fleet: f.Fleet, client: VnetClient,
                                                    amqp_url: str) -> None:
    h1, h2, h3 = fleet.hosts
    g1 = fleet.add_guest(h1, "10.7.0.1", "52:54:00:07:00:01")
    seg = Segment(vni=300, bridge="br-c", vxlan="vx-c", unicast=False)
    all_ok(await ensure_segment(client, seg, hosts_of(fleet)))
    await attach(client, g1, "br-c")

    async def flood() -> tuple[int, int]:
        """Broadcasts from g1 (ARP for an address nobody has): rx on h2's and h3's VXLAN."""
        before = f.rx_packets(h2.netns, "vx-c"), f.rx_packets(h3.netns, "vx-c")
        f.ping(g1, "10.7.0.99", count=4, interval=0.2, timeout=0.5)
        await asyncio.sleep(0.2)
        return (f.rx_packets(h2.netns, "vx-c") - before[0],
                f.rx_packets(h3.netns, "vx-c") - before[1])

    to_h2, to_h3 = await flood()
    assert to_h2 > 0 and to_h3 > 0  # both get the floods while h3 is a remote
    # h3 leaves the segment: h1 and h2 are given each other only (by the CLI, this time).
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vnetd.cli.vnetctl", "--url", amqp_url, "-o", "json", "segment",
        "ensure", "--vni", "300", "--bridge", "br-c", "--vxlan", "vx-c", "--no-unicast",
        f"{h1.host_id}={h1.address}", f"{h2.host_id}={h2.address}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    results = json.loads(out)
    assert [r["ok"] for r in results] == [True, True]
    assert results[0]["removed"]["remotes"] == 1
    assert f.remotes(h1.netns, "vx-c") == {h2.address}
    to_h2, to_h3 = await flood()
    assert to_h2 > 0 and to_h3 == 0


@pytest.mark.parametrize("fleet", [2], indirect=True)
async def test_hand_deleted_entry_is_an_event_and_resending_restores_it(
        fleet: f.Fleet, client: VnetClient, amqp_url: str) -> None:
    h1, h2 = fleet.hosts
    elsewhere = "198.51.100.99"
    g2 = fleet.add_guest(h2, "10.6.0.2", "52:54:00:06:00:02")
    seg = Segment(vni=400, bridge="br-d", vxlan="vx-d", proxy=True)
    hosts = hosts_of(fleet, [g2])
    all_ok(await ensure_segment(client, seg, hosts))
    run_in(h1.netns, "bridge", "fdb", "add", "52:54:00:06:00:99", "dev", "vx-d", "dst",
           elsewhere)  # someone's own entry: never touched
    async with Subscriber(amqp_url, h1.host_id) as sub:
        await asyncio.sleep(0.3)
        run_in(h1.netns, "bridge", "fdb", "del", "00:00:00:00:00:00", "dev", "vx-d", "dst",
               h2.address)
        run_in(h1.netns, "ip", "neigh", "del", "10.6.0.2", "dev", "vx-d")
        removed = await sub.wait_for(lambda e: e.type == "fdb.changed", timeout=10)
        assert removed.data["change"] == "removed" and removed.data["dst"] == h2.address
        assert removed.data["interface"] == "vx-d" and removed.data["outside_vnetd"]
        neigh = await sub.wait_for(lambda e: e.type == "neighbour.changed", timeout=10)
        assert neigh.data["ip"] == "10.6.0.2" and neigh.data["change"] == "removed"
        assert f.remotes(h1.netns, "vx-d") == set()
        results = await ensure_segment(client, seg, hosts)
        all_ok(results)
        assert results[0].added == {"remotes": 1, "fdb": 0, "neighbours": 1}
        await asyncio.sleep(0.5)
        # vnetd's own repair is not reported as drift.
        drift = [e for e in sub.received if e.type in ("fdb.changed", "neighbour.changed")]
        assert len(drift) == 2, [e.data for e in drift]
    assert f.remotes(h1.netns, "vx-d") == {h2.address}
    neigh_out = run_in(h1.netns, "ip", "neigh", "show", "dev", "vx-d").stdout
    assert "10.6.0.2" in neigh_out and "52:54:00:06:00:02" in neigh_out
    rows = {r["mac"]: r for r in f.fdb_rows(h1.netns, "vx-d")}
    assert rows["52:54:00:06:00:99"]["dst"] == elsewhere  # the foreign entry is still there


@pytest.mark.parametrize("fleet", [2], indirect=True)
async def test_daemon_restart_and_resend_lose_no_ping(fleet: f.Fleet, client: VnetClient) -> None:
    h1, h2 = fleet.hosts
    g1 = fleet.add_guest(h1, "10.5.0.1", "52:54:00:05:00:01")
    g2 = fleet.add_guest(h2, "10.5.0.2", "52:54:00:05:00:02")
    seg = Segment(vni=500, bridge="br-e", vxlan="vx-e", proxy=True)
    hosts = hosts_of(fleet, [g1, g2])
    all_ok(await ensure_segment(client, seg, hosts))
    await attach(client, g1, "br-e")
    await attach(client, g2, "br-e")
    assert f.ping(g1, "10.5.0.2", count=2, interval=0.1)[1] == 2
    count = 100  # 5 s at 50 ms
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", g1.netns, "ping", "-n", "-q", "-i", "0.05", "-c", str(count),
        "-W", "1", "10.5.0.2", stdout=asyncio.subprocess.PIPE)
    await asyncio.sleep(0.5)
    await h1.daemon.kill()  # a crash: no shutdown at all
    await h1.daemon.start()
    await h2.daemon.stop()  # a clean stop
    await h2.daemon.start()
    results = await ensure_segment(client, seg, hosts)  # full state re-sent mid-traffic
    out, _ = await proc.communicate()
    all_ok(results)
    assert all(not any(r.added.values()) and not any(r.removed.values()) for r in results)
    sent, received = f.ping_counts(out.decode())
    assert sent == count and received == count, f"lost {sent - received} of {sent}"
    # After the restart the daemon still reports what it owns.
    links = (await client.call(h1.host_id, "link.list", {"kind": "vxlan"})).result["links"]
    assert links[0]["owned"] and links[0]["vxlan"]["remotes"] == 1


@pytest.mark.parametrize("fleet", [1], indirect=True)
async def test_bad_input_changes_nothing(fleet: f.Fleet, client: VnetClient) -> None:
    h1 = fleet.hosts[0]
    before = f.run_in(h1.netns, "ip", "-j", "link", "show").stdout
    for args, needle in (
        ({"name": "vx-z", "vni": 5, "local": h1.address, "mtu": 1451},
         "u0 has MTU 1500, VXLAN over IPv4 costs 50 bytes, so at most 1450"),
        ({"name": "vx-z", "vni": 0, "local": h1.address}, "vni"),
        ({"name": "vx-z", "vni": 5, "local": "198.51.100.250"}, "not configured"),
        ({"name": "vx-z", "vni": 5, "local": h1.address, "bridge": "br-none"}, "br-none"),
    ):
        reply = await client.call(h1.host_id, "vxlan.ensure", args)
        assert not reply.ok and needle in str(reply.error), reply.error
    reply = await client.call(h1.host_id, "fdb.converge", {"name": "u0", "remotes": []})
    assert not reply.ok and reply.error_code == "conflict"
    assert f.run_in(h1.netns, "ip", "-j", "link", "show").stdout == before
