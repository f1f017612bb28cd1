"""Every foundation op end to end: RabbitMQ in, the real kernel out, checked with `ip -j`."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import netns as ns
from tests.support.daemon import DaemonProcess
from tests.support.rpc import RawRpc, ok

pytestmark = pytest.mark.integration


async def err(rpc: RawRpc, d: DaemonProcess, op: str, **args: Any) -> dict[str, Any]:
    reply = await rpc.call(d.host_id, op, args)
    assert reply["ok"] is False, reply
    assert set(reply["error"]) == {"code", "message", "details"}
    return reply["error"]


async def test_bridge_ensure_creates_marks_and_converges(rpc: RawRpc, daemon: DaemonProcess,
                                                         netns: str) -> None:
    res = await ok(rpc, daemon, "bridge.ensure", name="br0", mtu=1450, stp=True,
                   forward_delay=4.0, ageing_time=120.0)
    assert res["created"] is True and res["kind"] == "bridge" and res["owned"] is True
    k = ns.link(netns, "br0")
    assert k is not None
    assert k["mtu"] == 1450 and "UP" in k["flags"] and k["ifalias"].startswith("vnetd:")
    info = k["linkinfo"]["info_data"]
    assert info["stp_state"] == 1 and info["forward_delay"] == 400
    assert info["ageing_time"] == 12000 and info["vlan_filtering"] == 0

    again = await ok(rpc, daemon, "bridge.ensure", name="br0", mtu=1450, stp=True)
    assert again["created"] is False and again["changed"] is False
    assert again["index"] == res["index"]

    conv = await ok(rpc, daemon, "bridge.ensure", name="br0", mtu=1400, stp=False, up=False)
    assert conv["changed"] is True and conv["mtu"] == 1400 and conv["state"] == "down"
    k = ns.link(netns, "br0")
    assert k is not None and k["mtu"] == 1400 and "UP" not in k["flags"]
    assert k["linkinfo"]["info_data"]["stp_state"] == 0


def _kernel_has_vlan_filtering(netns: str) -> bool:
    ns.run_in(netns, "ip", "link", "add", "probe0", "type", "bridge")
    try:
        return ns.run_in(netns, "ip", "link", "set", "probe0", "type", "bridge",
                         "vlan_filtering", "1", check=False).returncode == 0
    finally:
        ns.run_in(netns, "ip", "link", "del", "probe0")


async def test_vlan_filtering_works_or_is_clearly_unsupported(
        rpc: RawRpc, daemon: DaemonProcess, netns: str) -> None:
    supported = _kernel_has_vlan_filtering(netns)
    reply = await rpc.call(daemon.host_id, "bridge.ensure", {"name": "brv", "vlan_filtering": True})
    if supported:
        assert reply["ok"] is True, reply
        assert ns.link(netns, "brv")["linkinfo"]["info_data"]["vlan_filtering"] == 1  # type: ignore[index]
    else:
        assert reply["ok"] is False and reply["error"]["code"] == "unsupported"
        assert "VLAN filtering" in reply["error"]["message"]
        assert ns.link(netns, "brv") is None  # refused whole: nothing half-made


async def test_tap_ensure_with_bridge_and_delete(rpc: RawRpc, daemon: DaemonProcess,
                                                 netns: str) -> None:
    await ok(rpc, daemon, "bridge.ensure", name="br0", mtu=1450)
    res = await ok(rpc, daemon, "tap.ensure", name="tap0", bridge="br0", owner_uid=107,
                   vnet_hdr=True, mac="52:54:00:12:34:56")
    assert res["master"] == "br0" and res["mtu"] == 1450 and res["created"] is True
    k = ns.link(netns, "tap0")
    assert k is not None
    assert k["master"] == "br0" and k["mtu"] == 1450 and k["address"] == "52:54:00:12:34:56"
    assert k["linkinfo"]["info_kind"] == "tun" and k["linkinfo"]["info_data"]["type"] == "tap"
    assert k["linkinfo"]["info_data"]["vnet_hdr"] is True and k["ifalias"].startswith("vnetd:")
    # IPv6 was disabled before the TAP came up: no link-local address, ever.
    addrs = ns.ip_json(netns, "-6", "addr", "show", "dev", "tap0")
    assert not any(a.get("addr_info") for a in addrs)
    # (a bridge port: no address generation is enough, see tests/integration/test_tap_ipv6.py)
    assert k["inet6_addr_gen_mode"] == "none"

    again = await ok(rpc, daemon, "tap.ensure", name="tap0", bridge="br0", owner_uid=107,
                     vnet_hdr=True)
    assert again["created"] is False and again["changed"] is False

    gone = await ok(rpc, daemon, "tap.delete", name="tap0")
    assert gone == {"name": "tap0", "deleted": True}
    assert ns.link(netns, "tap0") is None
    assert (await ok(rpc, daemon, "tap.delete", name="tap0"))["deleted"] is False


async def test_tap_keeps_ipv6_when_asked(rpc: RawRpc, daemon: DaemonProcess, netns: str) -> None:
    await ok(rpc, daemon, "tap.ensure", name="tap6", ipv6=True)
    sysctl = ns.run_in(netns, "cat", "/proc/sys/net/ipv6/conf/tap6/disable_ipv6").stdout
    assert sysctl.strip() == "0"


async def test_port_attach_detach_and_bridge_list(rpc: RawRpc, daemon: DaemonProcess,
                                                  netns: str) -> None:
    await ok(rpc, daemon, "bridge.ensure", name="br0")
    await ok(rpc, daemon, "bridge.ensure", name="br1")
    await ok(rpc, daemon, "tap.ensure", name="tap0")
    await ok(rpc, daemon, "tap.ensure", name="tap1", bridge="br0")
    res = await ok(rpc, daemon, "port.attach", name="tap0", bridge="br0")
    assert res["master"] == "br0" and res["changed"] is True
    assert (await ok(rpc, daemon, "port.attach", name="tap0", bridge="br0"))["changed"] is False
    assert ns.link(netns, "tap0")["master"] == "br0"  # type: ignore[index]

    table = await ok(rpc, daemon, "bridge.list")
    by_name = {b["name"]: b for b in table["bridges"]}
    assert by_name["br0"]["ports"] == ["tap0", "tap1"] and by_name["br1"]["ports"] == []

    moved = await err(rpc, daemon, "port.attach", name="tap0", bridge="br1")
    assert moved["code"] == "conflict" and moved["details"]["master"] == "br0"

    det = await ok(rpc, daemon, "port.detach", name="tap0")
    assert det == {"name": "tap0", "detached": True, "bridge": "br0"}
    assert "master" not in ns.link(netns, "tap0")  # type: ignore[operator]
    assert (await ok(rpc, daemon, "port.detach", name="tap0"))["detached"] is False
    assert (await ok(rpc, daemon, "port.detach", name="nosuch"))["detached"] is False

    deleted = await ok(rpc, daemon, "bridge.delete", name="br0")
    assert deleted == {"name": "br0", "deleted": True, "detached_ports": ["tap1"]}
    assert ns.link(netns, "br0") is None and ns.link(netns, "tap1") is not None


async def test_link_set_and_list(rpc: RawRpc, daemon: DaemonProcess, netns: str) -> None:
    await ok(rpc, daemon, "tap.ensure", name="tap0", up=False)
    ns.run_in(netns, "ip", "link", "add", "foreign0", "type", "dummy", check=False)
    ns.run_in(netns, "ip", "tuntap", "add", "dev", "foreign1", "mode", "tap")
    res = await ok(rpc, daemon, "link.set", name="tap0", up=True, mtu=9000,
                   mac="52:54:00:aa:bb:cc")
    assert res["state"] == "up" and res["mtu"] == 9000 and res["mac"] == "52:54:00:aa:bb:cc"
    k = ns.link(netns, "tap0")
    assert k is not None and k["mtu"] == 9000 and "UP" in k["flags"]

    links = (await ok(rpc, daemon, "link.list"))["links"]
    names = {link["name"]: link for link in links}
    assert {"lo", "tap0", "foreign1"} <= set(names)
    assert names["tap0"]["owned"] is True and names["foreign1"]["owned"] is False
    taps = (await ok(rpc, daemon, "link.list", kind="tap"))["links"]
    assert {t["name"] for t in taps} == {"tap0", "foreign1"}
    owned = (await ok(rpc, daemon, "link.list", owned_only=True))["links"]
    assert [o["name"] for o in owned] == ["tap0"]


async def test_snapshot_and_health(rpc: RawRpc, daemon: DaemonProcess, netns: str) -> None:
    await ok(rpc, daemon, "tap.ensure", name="tap0")
    snap = await ok(rpc, daemon, "host.snapshot")
    assert snap["host_id"] == daemon.host_id
    kernel = {link["ifname"] for link in ns.ip_json(netns, "link", "show")}
    assert {link["name"] for link in snap["links"]} == kernel
    health = await ok(rpc, daemon, "host.health")
    assert health["status"] == "healthy"
    assert health["kernel"]["bridge"] is True and health["kernel"]["tun_device"] is True
    assert health["components"]["broker"] == "connected"
    assert health["version"]


async def test_batch_runs_in_order_and_stops_on_error(rpc: RawRpc, daemon: DaemonProcess,
                                                      netns: str) -> None:
    cmds = [{"op": "bridge.ensure", "args": {"name": "br0"}}]
    cmds += [{"op": "tap.ensure", "args": {"name": f"t{i}", "bridge": "br0"}} for i in range(20)]
    res = await ok(rpc, daemon, "batch", commands=cmds)
    assert res["completed"] == 21 and res["failed"] == 0
    assert all(r["ok"] for r in res["results"])
    links = ns.links(netns)
    assert all(links[f"t{i}"]["master"] == "br0" for i in range(20))

    ns.run_in(netns, "ip", "tuntap", "add", "dev", "foreign", "mode", "tap")
    bad = [{"op": "tap.delete", "args": {"name": "t0"}},
           {"op": "tap.delete", "args": {"name": "foreign"}},
           {"op": "tap.delete", "args": {"name": "t1"}}]
    res = await ok(rpc, daemon, "batch", commands=bad)
    assert (res["completed"], res["failed"], res["skipped"]) == (1, 1, 1)
    assert res["results"][1]["error"]["code"] == "forbidden"
    links = ns.links(netns)
    assert "t0" not in links and "t1" in links and "foreign" in links

    res = await ok(rpc, daemon, "batch", commands=bad, stop_on_error=False)
    assert (res["completed"], res["failed"], res["skipped"]) == (2, 1, 0)
    assert "t1" not in ns.links(netns)

    # A run of tap.ensure goes together (one read, the creations pipelined): an error in
    # it stops the batch there, and nothing after it is left in the kernel.
    run = [{"op": "tap.ensure", "args": {"name": f"u{i}", "bridge": "br0"}} for i in range(6)]
    run[3] = {"op": "tap.ensure", "args": {"name": "u3", "bridge": "nosuch"}}
    res = await ok(rpc, daemon, "batch", commands=run)
    assert (res["completed"], res["failed"], res["skipped"]) == (3, 1, 2)
    assert res["results"][3]["error"]["code"] == "not_found"
    links = ns.links(netns)
    assert {n for n in links if n.startswith("u")} == {"u0", "u1", "u2"}
    for i in range(3):
        assert links[f"u{i}"]["master"] == "br0" and links[f"u{i}"]["ifalias"] == "vnetd:v1"
        assert res["results"][i]["result"]["master"] == "br0"
        assert res["results"][i]["result"]["tap"]["persistent"] is True
    res = await ok(rpc, daemon, "batch", commands=run, stop_on_error=False)
    assert (res["completed"], res["failed"], res["skipped"]) == (5, 1, 0)
    assert [r["result"]["created"] for r in res["results"] if r["ok"]] == [False] * 3 + [True] * 2
    assert {n for n in ns.links(netns) if n.startswith("u")} == {"u0", "u1", "u2", "u4", "u5"}


async def test_many_jobs_in_flight_converge(rpc: RawRpc, daemon: DaemonProcess,
                                            netns: str) -> None:
    await ok(rpc, daemon, "bridge.ensure", name="br0")
    # Every TAP twice, all at once: per-name locks make the repeats no-ops, not races.
    reqs = [("tap.ensure", {"name": f"c{i}", "bridge": "br0"}) for i in range(100)] * 2
    replies = await rpc.call_many(daemon.host_id, reqs, concurrency=64)
    assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]][:3]
    assert sum(r["result"]["created"] for r in replies) == 100
    links = ns.links(netns)
    assert sum(1 for n in links if n.startswith("c")) == 100
    assert all(links[f"c{i}"]["master"] == "br0" for i in range(100))
