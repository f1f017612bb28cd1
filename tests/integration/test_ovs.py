"""Open vSwitch end to end: jobs over RabbitMQ, a real ovsdb-server + ovs-vswitchd
(userspace datapath) in the daemon's namespace, results checked with ovs-vsctl and ip."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.events_subscriber import Subscriber
from tests.integration.test_ops import err, ok
from tests.integration.test_vnetctl import vnetctl
from tests.support import netns as ns
from tests.support.daemon import DaemonProcess
from tests.support.env import Lab
from tests.support.ovs import PrivateOvs, private_ovs
from tests.support.rpc import RawRpc

pytestmark = pytest.mark.integration

ATTACHABLE = ["ve-*"]  # the test's veth ends: not vnetd's, so allowed by policy


@pytest.fixture
def ovs(lab: Lab, netns: str) -> Iterator[PrivateOvs]:
    """ovsdb-server + ovs-vswitchd inside the `netns` fixture's namespace."""
    yield from private_ovs(lab.dir / f"ovs-{netns}", netns)


def ovs_config(o: PrivateOvs, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "db": o.remote, "datapath_type": "netdev",
            "apply_timeout_seconds": 5.0, **extra}


@pytest.fixture
async def odaemon(start_daemon: Any, netns: str, ovs: PrivateOvs) -> DaemonProcess:
    d: DaemonProcess = await start_daemon(netns=netns, ovs=ovs_config(ovs),
                                          policy={"attachable": ATTACHABLE, "protected": ["lo"]})
    return d


def vsctl_get(o: PrivateOvs, table: str, record: str, column: str) -> str:
    return o.vsctl("--no-wait", "get", table, record, column).stdout.strip()


def veth(netns: str, name: str, peer: str, peer_ns: str | None = None) -> None:
    ns.run_in(netns, "ip", "link", "add", name, "type", "veth", "peer", "name", peer)
    if peer_ns is not None:
        ns.run_in(netns, "ip", "link", "set", peer, "netns", peer_ns)
    ns.run_in(netns, "ip", "link", "set", name, "up")


# ---------------------------------------------------------------- bridges
async def test_bridge_ensure_is_idempotent_and_delete_removes_it(
        rpc: RawRpc, odaemon: DaemonProcess, ovs: PrivateOvs, netns: str) -> None:
    res = await ok(rpc, odaemon, "ovs.bridge.ensure", name="obr0")
    assert res["created"] is True and res["owned"] is True
    assert res["kind"] == "ovs" and res["datapath_type"] == "netdev" and res["ports"] == []
    assert ovs.vsctl("br-exists", "obr0").returncode == 0
    assert vsctl_get(ovs, "Bridge", "obr0", "datapath_type") == "netdev"
    assert vsctl_get(ovs, "Bridge", "obr0", "external_ids:vnetd-owner").strip('"') == "v1"
    # ovs-vswitchd made the bridge's internal port, a TAP in the daemon's namespace
    assert ns.link(netns, "obr0") is not None

    again = await ok(rpc, odaemon, "ovs.bridge.ensure", name="obr0")
    assert again["created"] is False and again["changed"] is False
    listed = await ok(rpc, odaemon, "bridge.list")
    assert [b["name"] for b in listed["bridges"] if b["kind"] == "ovs"] == ["obr0"]
    assert (await ok(rpc, odaemon, "ovs.bridge.list"))["bridges"][0]["name"] == "obr0"
    snap = await ok(rpc, odaemon, "host.snapshot")
    assert [b["name"] for b in snap["ovs"]["bridges"]] == ["obr0"]

    gone = await ok(rpc, odaemon, "ovs.bridge.delete", name="obr0")
    assert gone == {"name": "obr0", "deleted": True, "detached_ports": []}
    assert ovs.vsctl("br-exists", "obr0", check=False).returncode == 2
    assert (await ok(rpc, odaemon, "ovs.bridge.delete", name="obr0"))["deleted"] is False


async def test_bridge_name_taken_by_a_kernel_device_is_a_conflict(
        rpc: RawRpc, odaemon: DaemonProcess, ovs: PrivateOvs, netns: str) -> None:
    ns.run_in(netns, "ip", "link", "add", "lbr0", "type", "bridge")
    e = await err(rpc, odaemon, "ovs.bridge.ensure", name="lbr0")
    assert e["code"] == "conflict" and "bridge device" in e["message"]
    assert ovs.vsctl("br-exists", "lbr0", check=False).returncode == 2


# ---------------------------------------------------------------- ports
async def test_port_attach_with_tag_converges_and_detaches(
        rpc: RawRpc, odaemon: DaemonProcess, ovs: PrivateOvs, netns: str) -> None:
    await ok(rpc, odaemon, "ovs.bridge.ensure", name="obr1")
    veth(netns, "ve-a", "ve-a-peer")
    res = await ok(rpc, odaemon, "ovs.port.attach", name="ve-a", bridge="obr1", tag=10)
    assert res["created"] is True and res["tag"] == 10 and res["bridge"] == "obr1"
    assert res["ofport"] is not None and res["ofport"] > 0  # vswitchd applied it before the reply
    assert ovs.vsctl("port-to-br", "ve-a").stdout.strip() == "obr1"
    assert vsctl_get(ovs, "Port", "ve-a", "tag") == "10"
    assert vsctl_get(ovs, "Port", "ve-a", "external_ids:vnetd-owner").strip('"') == "v1"

    same = await ok(rpc, odaemon, "ovs.port.attach", name="ve-a", bridge="obr1", tag=10)
    assert same["created"] is False and same["changed"] is False
    show = await vnetctl(odaemon.amqp_url, "--host", odaemon.host_id, "show")
    assert show.returncode == 0, show.stderr
    assert "ovs bridges:" in show.stdout and "obr1  ovs  netdev  owned" in show.stdout
    assert "ve-a  tag 10" in show.stdout, show.stdout
    trunk = await ok(rpc, odaemon, "ovs.port.attach", name="ve-a", bridge="obr1",
                     trunks=[30, 20])
    assert trunk["changed"] is True and trunk["tag"] is None and trunk["trunks"] == [20, 30]
    assert vsctl_get(ovs, "Port", "ve-a", "tag") == "[]"
    assert vsctl_get(ovs, "Port", "ve-a", "trunks") == "[20, 30]"
    assert (await ok(rpc, odaemon, "ovs.bridge.list"))["bridges"][0]["ports"] == ["ve-a"]

    det = await ok(rpc, odaemon, "ovs.port.detach", name="ve-a")
    assert det == {"name": "ve-a", "detached": True, "bridge": "obr1"}
    assert ovs.vsctl("port-to-br", "ve-a", check=False).returncode != 0
    assert (await ok(rpc, odaemon, "ovs.port.detach", name="ve-a"))["detached"] is False
    assert ns.link(netns, "ve-a") is not None  # the device itself is left alone


async def test_two_guests_on_a_vlan_ping_and_another_vlan_does_not(
        rpc: RawRpc, odaemon: DaemonProcess, ovs: PrivateOvs, netns: str,
        netns_factory: ns.NetnsFactory) -> None:
    await ok(rpc, odaemon, "ovs.bridge.ensure", name="obr2")
    guests = {}
    for i, tag in ((1, 100), (2, 100), (3, 200)):
        g = netns_factory()
        veth(netns, f"ve-g{i}", "eth0", g)
        ns.run_in(g, "ip", "addr", "add", f"10.77.0.{i}/24", "dev", "eth0")
        ns.run_in(g, "ip", "link", "set", "eth0", "up")
        await ok(rpc, odaemon, "ovs.port.attach", name=f"ve-g{i}", bridge="obr2", tag=tag)
        guests[i] = g
    ping = await ns.arun_in(guests[1], "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.77.0.2",
                            check=False, timeout=30)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    other = await ns.arun_in(guests[1], "ping", "-c", "2", "-i", "0.2", "-W", "1", "10.77.0.3",
                             check=False, timeout=30)
    assert other.returncode != 0, "VLAN 100 reached a guest on VLAN 200"
    # moving guest 3 onto VLAN 100 (a converging attach) joins it
    await ok(rpc, odaemon, "ovs.port.attach", name="ve-g3", bridge="obr2", tag=100)
    joined = await ns.arun_in(guests[1], "ping", "-c", "3", "-i", "0.2", "-W", "2",
                              "10.77.0.3", check=False, timeout=30)
    assert joined.returncode == 0, joined.stdout + joined.stderr


# ---------------------------------------------------------------- ownership and validation
async def test_foreign_bridges_and_ports_are_refused(
        rpc: RawRpc, odaemon: DaemonProcess, ovs: PrivateOvs, netns: str) -> None:
    ovs.vsctl("add-br", "fbr0", "--", "set", "bridge", "fbr0", "datapath_type=netdev")
    veth(netns, "ve-f", "ve-f-peer")
    ovs.vsctl("add-port", "fbr0", "ve-f")
    await ok(rpc, odaemon, "ovs.bridge.ensure", name="obr3")
    veth(netns, "ve-b", "ve-b-peer")
    veth(netns, "xx-other", "xx-other-p")  # neither vnetd's nor attachable

    assert (await err(rpc, odaemon, "ovs.bridge.ensure", name="fbr0"))["code"] == "forbidden"
    assert (await err(rpc, odaemon, "ovs.bridge.delete", name="fbr0"))["code"] == "forbidden"
    e = await err(rpc, odaemon, "ovs.port.attach", name="ve-b", bridge="fbr0")
    assert e["code"] == "forbidden" and "foreign_bridges" in e["message"]
    assert (await err(rpc, odaemon, "ovs.port.detach", name="ve-f"))["code"] == "forbidden"
    e = await err(rpc, odaemon, "ovs.port.attach", name="ve-f", bridge="obr3")
    assert e["code"] == "forbidden"  # a port someone else added is not moved or changed
    e = await err(rpc, odaemon, "ovs.port.attach", name="xx-other", bridge="obr3")
    assert e["code"] == "forbidden" and "attachable" in e["message"]
    e = await err(rpc, odaemon, "ovs.port.detach", name="obr3")
    assert e["code"] == "conflict"  # the internal port goes with its bridge only
    assert ovs.vsctl("port-to-br", "ve-f").stdout.strip() == "fbr0"
    assert ovs.vsctl("br-exists", "fbr0").returncode == 0
    assert ovs.vsctl("list-ports", "obr3").stdout.split() == []


@pytest.mark.parametrize("args", [
    {"name": "ve-b", "bridge": "obr3", "tag": 4096},
    {"name": "ve-b", "bridge": "obr3", "tag": -1},
    {"name": "ve-b", "bridge": "obr3", "trunks": [10, 10]},
    {"name": "ve-b", "bridge": "obr3", "trunks": list(range(4097))},
    {"name": "ve-b", "bridge": "obr3", "tag": 10, "trunks": [20]},
    {"name": "ve-b", "bridge": "obr3", "tag": 10, "vlan_mode": "trunk"},
    {"name": "ve-b", "bridge": "obr3", "vlan_mode": "native-untagged"},
    {"name": "a" * 16, "bridge": "obr3"},
    {"name": "ve-b", "bridge": "bad/name"},
    {"name": "ve-b", "bridge": "obr3", "colour": "red"},
])
async def test_bad_port_attach_is_refused_before_any_change(
        rpc: RawRpc, odaemon: DaemonProcess, ovs: PrivateOvs, args: dict[str, Any]) -> None:
    before = ovs.vsctl("--no-wait", "show").stdout
    e = await err(rpc, odaemon, "ovs.port.attach", **args)
    assert e["code"] == "invalid_argument", e
    assert ovs.vsctl("--no-wait", "show").stdout == before


# ---------------------------------------------------------------- events
async def test_ovsdb_changes_become_events(start_daemon: Any, lab: Lab, netns: str,
                                           ovs: PrivateOvs, amqp_url: str,
                                           rpc: RawRpc) -> None:
    host = DaemonProcess.new_host_id(lab.suffix)
    async with Subscriber(amqp_url, host) as sub:
        d = await start_daemon(netns=netns, host_id=host, ovs=ovs_config(ovs),
                               policy={"attachable": ATTACHABLE, "protected": ["lo"]})
        await sub.wait_type("host.started")
        await ok(rpc, d, "ovs.bridge.ensure", name="obr4")
        added = await sub.wait_type("ovs.bridge.added", "obr4")
        assert added.data["kind"] == "ovs" and added.data["owned"] is True
        veth(netns, "ve-e", "ve-e-peer")
        await ok(rpc, d, "ovs.port.attach", name="ve-e", bridge="obr4", tag=7)
        port = await sub.wait_type("ovs.port.added", "ve-e")
        assert port.data["bridge"] == "obr4" and port.data["tag"] == 7
        # a change made by someone else, straight in the database
        mark = len(sub.received)
        ovs.vsctl("set", "Port", "ve-e", "tag=8")
        changed = await sub.wait_for(lambda r: r.type == "ovs.port.changed"
                                     and r.event.get("subject") == "ve-e"
                                     and "tag" in r.data["changes"], start=mark)
        assert changed.data["tag"] == 8 and changed.data["previous"]["tag"] == 7
        await ok(rpc, d, "ovs.port.detach", name="ve-e")
        removed = await sub.wait_type("ovs.port.removed", "ve-e")
        assert removed.data == {"name": "ve-e", "bridge": "obr4", "owned": True}
        await ok(rpc, d, "ovs.bridge.delete", name="obr4")
        await sub.wait_type("ovs.bridge.removed", "obr4")
        seqs = [r.seq for r in sub.received]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert all(json.loads(json.dumps(r.event))["source"] == f"vnetd://{host}"
                   for r in sub.received)


# ---------------------------------------------------------------- cleanup
async def test_cleanup_removes_an_owned_empty_bridge_only(
        start_daemon: Any, netns: str, ovs: PrivateOvs, rpc: RawRpc) -> None:
    d = await start_daemon(netns=netns, ovs=ovs_config(ovs),
                           policy={"attachable": ATTACHABLE, "protected": ["lo"]},
                           cleanup={"bridge_grace_seconds": 0, "tap_grace_seconds": 0,
                                    "lease_seconds": 1})
    await ok(rpc, d, "ovs.bridge.ensure", name="orph0")
    await ok(rpc, d, "ovs.bridge.ensure", name="busy0")
    veth(netns, "ve-c", "ve-c-peer")
    await ok(rpc, d, "ovs.port.attach", name="ve-c", bridge="busy0")
    ovs.vsctl("add-br", "fbr1", "--", "set", "bridge", "fbr1", "datapath_type=netdev")
    dry = await ok(rpc, d, "cleanup.run", dry_run=True)
    leased = {c["name"]: c for c in dry["candidates"] if c["kind"] == "ovs_bridge"}
    assert leased["orph0"]["action"] == "kept" and "leased" in leased["orph0"]["reason"]
    await asyncio.sleep(1.2)  # the lease of the ensure runs out
    res = await ok(rpc, d, "cleanup.run")
    ovs_rows = {c["name"]: c for c in res["candidates"] if c["kind"] == "ovs_bridge"}
    assert ovs_rows["orph0"]["action"] == "removed"
    assert "busy0" not in ovs_rows and "fbr1" not in ovs_rows  # in use / not ours: not candidates
    assert ovs.vsctl("br-exists", "orph0", check=False).returncode == 2
    assert ovs.vsctl("br-exists", "busy0").returncode == 0
    assert ovs.vsctl("br-exists", "fbr1").returncode == 0


# ---------------------------------------------------------------- without OVS
async def test_ovs_disabled_answers_unsupported(rpc: RawRpc, daemon: DaemonProcess) -> None:
    e = await err(rpc, daemon, "ovs.bridge.ensure", name="obr5")
    assert e["code"] == "unsupported" and "[ovs] enabled" in e["message"]
    health = await ok(rpc, daemon, "host.health")
    assert health["ovs"] == {"state": "disabled", "reason": "[ovs] enabled = false"}
    assert health["status"] == "healthy"
    listed = await ok(rpc, daemon, "bridge.list")
    assert all(b["kind"] != "ovs" for b in listed["bridges"])


async def test_ovsdb_down_answers_unavailable_then_recovers(
        start_daemon: Any, lab: Lab, netns: str, rpc: RawRpc) -> None:
    o = PrivateOvs(lab.dir / f"ovs-late-{netns}", netns)
    d = await start_daemon(netns=netns, ovs={"enabled": True, "db": o.remote,
                                             "datapath_type": "netdev"})
    e = await err(rpc, d, "ovs.bridge.ensure", name="obr6")
    assert e["code"] == "unavailable" and o.remote in e["message"]
    health = await ok(rpc, d, "host.health")
    assert health["status"] == "degraded" and health["ovs"]["state"] == "degraded"
    assert health["ovs"]["reason"] and health["components"]["ovs"] == "degraded"
    try:
        o.start()
        for _ in range(100):  # the client retries with backoff (at most 5 s apart)
            health = await ok(rpc, d, "host.health")
            if health["ovs"]["state"] == "connected":
                break
            await asyncio.sleep(0.2)
        assert health["ovs"]["state"] == "connected" and health["status"] == "healthy"
        assert (await ok(rpc, d, "ovs.bridge.ensure", name="obr6"))["created"] is True
        # ovsdb-server restarts: degraded, then the IDL reconnects by itself
        o.stop_db()
        for _ in range(50):
            if (await ok(rpc, d, "host.health"))["ovs"]["state"] != "connected":
                break
            await asyncio.sleep(0.1)
        assert (await err(rpc, d, "ovs.bridge.list"))["code"] == "unavailable"
        o.start_db()
        for _ in range(100):
            if (await ok(rpc, d, "host.health"))["ovs"]["state"] == "connected":
                break
            await asyncio.sleep(0.2)
        bridges = (await ok(rpc, d, "ovs.bridge.list"))["bridges"]
        assert [b["name"] for b in bridges] == ["obr6"]  # the database kept it
    finally:
        o.stop()


async def test_a_job_without_reply_to_takes_effect_once_ovsdb_is_back(
        start_daemon: Any, lab: Lab, netns: str, rpc: RawRpc) -> None:
    """Reliability rule 10: `unavailable` with nobody to tell is retried (delayed requeue),
    never acked and dropped."""
    o = PrivateOvs(lab.dir / f"ovs-retry-{netns}", netns)
    d = await start_daemon(netns=netns, ovs={"enabled": True, "db": o.remote,
                                             "datapath_type": "netdev"},
                           amqp={"retry_delay_seconds": 0.5, "retry_attempts": 200})
    await rpc.publish_no_reply(d.host_id, "ovs.bridge.ensure", {"name": "obr7"})
    try:
        await asyncio.sleep(2.0)  # several attempts meet no ovsdb-server
        assert "job_retry_later" in d.log_text()
        o.start()
        for _ in range(150):
            if o.vsctl("br-exists", "obr7", check=False).returncode == 0:
                break
            await asyncio.sleep(0.2)
        assert o.vsctl("br-exists", "obr7", check=False).returncode == 0
        assert vsctl_get(o, "Bridge", "obr7", "external_ids:vnetd-owner").strip('"') == "v1"
    finally:
        o.stop()
