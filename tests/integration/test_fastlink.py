"""The raw rtnetlink fast path against the real kernel (and against pyroute2's decoding)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest
from pyroute2 import AsyncIPRoute

from tests.support import netns as netns_mod
from tests.support.pyroute2_ref import link_from_pyroute2
from vnetd.contract.errors import Conflict, NotFound
from vnetd.net import rtnl
from vnetd.net.model import CREATING_GROUP, OWNER_ALIAS, BridgeOptions, Link, LinkChange, TapSpec
from vnetd.net.netlink import NetlinkBackend

pytestmark = pytest.mark.integration


def _ip(ns: str, *args: str) -> None:
    netns_mod.run_in(ns, "ip", *args)


async def _pyroute2_links(ns: str) -> dict[str, object]:
    ipr = AsyncIPRoute(netns=ns)
    try:
        return {link.name: link for link in
                [link_from_pyroute2(m) async for m in await ipr.link("dump")]}
    finally:
        ipr.close()


async def test_decoding_equals_pyroute2_for_every_kind(netns: str) -> None:
    _ip(netns, "link", "add", "fbr", "type", "bridge", "stp_state", "1",
        "forward_delay", "500", "ageing_time", "12345")
    _ip(netns, "tuntap", "add", "dev", "ftap", "mode", "tap", "user", "107", "group", "36",
        "multi_queue", "vnet_hdr")
    _ip(netns, "tuntap", "add", "dev", "ftun", "mode", "tun")
    _ip(netns, "link", "set", "ftap", "master", "fbr", "up", "alias", OWNER_ALIAS, "mtu", "1400")
    _ip(netns, "link", "add", "fv0", "type", "veth", "peer", "name", "fv1")
    _ip(netns, "link", "set", "fv0", "address", "02:11:22:33:44:55", "up")
    _ip(netns, "link", "add", "fvx", "type", "vxlan", "id", "5", "dstport", "4789")
    net = NetlinkBackend(netns)
    try:
        fast = {link.name: link for link in await net.list_links()}
        slow = await _pyroute2_links(netns)
        assert fast.keys() == slow.keys() == {"lo", "fbr", "ftap", "ftun", "fv0", "fv1", "fvx"}
        for name, link in slow.items():
            assert fast[name] == link, name
            assert await net.get_link(name) == link, name
            assert await net.get_link_by_index(fast[name].index) == link, name
        tap = fast["ftap"]
        assert tap.kind == "tap" and tap.tun is not None
        assert (tap.tun.owner_uid, tap.tun.group_gid, tap.tun.multi_queue, tap.tun.vnet_hdr) == (
            107, 36, True, True)
        assert tap.master == fast["fbr"].index and tap.alias == OWNER_ALIAS and tap.mtu == 1400
        assert fast["fbr"].bridge is not None and fast["fbr"].bridge.stp is True
        assert fast["ftun"].kind == "tun"
        assert fast["lo"].kind == "loopback"
        assert fast["fv0"].mac == "02:11:22:33:44:55"
    finally:
        await net.close()


async def test_errors_keep_their_contract_meaning(netns: str) -> None:
    net = NetlinkBackend(netns)
    try:
        assert await net.get_link("nope0") is None
        assert await net.get_link_by_index(99999) is None
        with pytest.raises(NotFound):
            await net.set_link(99999, LinkChange(up=True))
        with pytest.raises(NotFound):
            await net.delete_link(99999)
        await net.add_bridge("ebr", 1400, "02:00:00:00:00:01", BridgeOptions(stp=False))
        with pytest.raises(Conflict):
            await net.add_bridge("ebr", None, None, BridgeOptions())
        await net.add_tap(TapSpec(name="etap"), LinkChange())
        with pytest.raises(Conflict):  # IFF_TUN_EXCL: an existing name is never adopted
            await net.add_tap(TapSpec(name="etap"), LinkChange())
        br = await net.get_link("ebr")
        assert br is not None and br.mac == "02:00:00:00:00:01"
        tap = await net.get_link("etap")
        assert tap is not None and not tap.up
        await net.set_link(tap.index, LinkChange(alias=OWNER_ALIAS, mtu=1300, master=br.index,
                                                 up=True))
        shown = netns_mod.link(netns, "etap")
        assert shown is not None
        assert shown["master"] == "ebr" and shown["mtu"] == 1300 and "UP" in shown["flags"]
        assert shown["ifalias"] == OWNER_ALIAS
    finally:
        await net.close()


async def test_taps_land_in_the_target_namespace_only(netns: str) -> None:
    net = NetlinkBackend(netns)
    try:
        for i in range(40):  # more than one batch of descriptors opened ahead
            await net.add_tap(TapSpec(name=f"ns{i}"), LinkChange())
    finally:
        await net.close()
    names = set(netns_mod.links(netns))
    assert {f"ns{i}" for i in range(40)} <= names
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    here = {e["ifname"] for e in json.loads(out)}  # the lab: where this test runs
    assert not any(n.startswith("ns") and n[2:].isdigit() for n in here)


async def test_concurrent_deletes_are_batched_and_touch_nothing_else(netns: str) -> None:
    net = NetlinkBackend(netns)
    try:
        for i in range(60):
            await net.add_tap(TapSpec(name=f"d{i}"), LinkChange())
        await net.add_tap(TapSpec(name="keep0"), LinkChange())
        links = {link.name: link for link in await net.list_links()}
        gone = links["d5"].index
        await net.delete_link(gone)
        results = await asyncio.gather(
            *(net.delete_link(links[f"d{i}"].index) for i in range(60)),
            return_exceptions=True)
        # d5 was already gone: NotFound for it alone, success for the rest
        assert isinstance(results[5], NotFound)
        assert all(r is None for i, r in enumerate(results) if i != 5)
    finally:
        await net.close()
    left = set(netns_mod.links(netns))
    assert "keep0" in left
    assert not any(n.startswith("d") and n[1:].isdigit() for n in left)


async def test_concurrent_tap_creation_leaks_no_descriptors(netns: str) -> None:
    """64 at once, as jobs in flight do: every descriptor opened ahead is used or closed."""
    before = len(os.listdir("/proc/self/fd"))
    net = NetlinkBackend(netns)
    try:
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with sem:
                await net.add_tap(TapSpec(name=f"c{i}"), LinkChange())

        await asyncio.gather(*(one(i) for i in range(300)))
    finally:
        await net.close()
    assert len(os.listdir("/proc/self/fd")) <= before
    names = set(netns_mod.links(netns))
    assert {f"c{i}" for i in range(300)} <= names


async def test_creations_are_marked_before_they_can_outlive_us(netns: str) -> None:
    """What the crash-window design relies on, checked on this kernel: an alias in the
    creating RTM_NEWLINK is ignored, a group in it is applied; the backend's bridges and
    TAPs come out marked, in the default group, a TAP persistent with IPv6 off when asked."""
    net = NetlinkBackend(netns)
    try:
        # The kernel's behaviour, through the backend's own socket.
        link = net._link  # the raw fast path: what the backend builds on
        await link.create(rtnl.new_bridge_body("kbr", None, None, BridgeOptions(),
                                               group=CREATING_GROUP)
                          + rtnl.attr(rtnl.IFLA_IFALIAS, OWNER_ALIAS.encode()))
        raw = await net.get_link("kbr")
        assert raw is not None and raw.alias is None and raw.group == CREATING_GROUP
        assert raw.half_created and not raw.owned
        await net.finish_creation(raw)
        done = await net.get_link("kbr")
        assert done is not None and done.owned and done.group == 0

        await net.add_bridge("cbr", None, None, BridgeOptions(stp=True))
        await net.add_tap(TapSpec(name="ctap", ipv6=False), LinkChange())
        await net.add_tap(TapSpec(name="ctap6"), LinkChange())
        for name in ("cbr", "ctap", "ctap6"):
            got = await net.get_link(name)
            assert got is not None and got.owned and got.group == 0, got
            assert not got.half_created
        tap = await net.get_link("ctap")
        assert tap is not None and tap.tun is not None and tap.tun.persistent
    finally:
        await net.close()
    # Still there with the daemon's descriptors closed: persistent.
    assert netns_mod.link(netns, "ctap") is not None
    sysctl = netns_mod.run_in(netns, "cat", "/proc/sys/net/ipv6/conf/ctap/disable_ipv6").stdout
    assert sysctl.strip() == "1"
    sysctl6 = netns_mod.run_in(netns, "cat", "/proc/sys/net/ipv6/conf/ctap6/disable_ipv6").stdout
    assert sysctl6.strip() == "0"
    assert netns_mod.link(netns, "cbr")["group"] == "default"  # type: ignore[index]


async def test_a_tap_creation_cut_short_leaves_no_tap(netns: str) -> None:
    """Anything ending add_tap before TUNSETPERSIST (here a cancellation while the IPv6
    sysctl of a TAP without a bridge is written: the kernel has created and marked it)
    closes the descriptor: the TAP is gone."""
    net = NetlinkBackend(netns)
    try:
        # descriptors opened ahead: the mark is read back at once, no wait before it
        await net.add_tap(TapSpec(name="first0"), LinkChange())
        job = asyncio.create_task(net.add_tap(TapSpec(name="cut0", ipv6=False), LinkChange()))
        await asyncio.sleep(0)  # it runs up to its first wait: the sysctl's thread
        mid = netns_mod.link(netns, "cut0")  # (blocking: the job stays where it is)
        assert mid is not None and mid["ifalias"] == OWNER_ALIAS
        assert mid["linkinfo"]["info_data"]["persist"] is False
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        assert await net.get_link("cut0") is None
        assert await net.get_link("first0") is not None
    finally:
        await net.close()
    assert netns_mod.link(netns, "cut0") is None


async def test_concurrent_dumps_take_turns(netns: str) -> None:
    # The kernel refuses a second dump on a socket while one runs (EBUSY); callers
    # such as a cleanup pass re-checking several bridges at once must not see that.
    _ip(netns, "link", "add", "fdbr", "type", "bridge")
    net = NetlinkBackend(netns)
    try:
        dumps = await asyncio.gather(*(net.list_links() for _ in range(8)))
        assert [sorted(link.name for link in d) for d in dumps] == [["fdbr", "lo"]] * 8
    finally:
        await net.close()


async def test_add_taps_pipelined_keeps_nothing_after_a_failure(netns: str) -> None:
    """Many creations at once (one write for every marking request): each kept TAP is
    whole; with stop_on_error, the TAPs after the first failure are gone (they were
    never persistent), as if made one by one and stopped there."""
    _ip(netns, "link", "add", "abr", "type", "bridge")
    net = NetlinkBackend(netns)
    try:
        br = await net.get_link("abr")
        assert br is not None

        def items(prefix: str) -> list[tuple[TapSpec, LinkChange]]:
            out = [(TapSpec(name=f"{prefix}{i}", ipv6=False),
                    LinkChange(master=br.index, up=True, mtu=1400)) for i in range(5)]
            out[2] = (TapSpec(name=f"{prefix}2"), LinkChange(master=2**31 - 1))  # EINVAL
            return out

        stopped = await net.add_taps(items("p"), stop_on_error=True)
        assert [type(r).__name__ for r in stopped] == ["Link", "Link", "InvalidArgument",
                                                        "NoneType", "NoneType"]
        first = stopped[0]
        assert isinstance(first, Link) and first.tun is not None and first.tun.persistent
        assert (first.name, first.master, first.mtu, first.up, first.owned) == (
            "p0", br.index, 1400, True, True)
        went_on = await net.add_taps(items("q"), stop_on_error=False)
        assert [type(r).__name__ for r in went_on] == ["Link", "Link", "InvalidArgument",
                                                        "Link", "Link"]
    finally:
        await net.close()
    links = netns_mod.links(netns)
    assert {n for n in links if n[0] in "pq"} == {"p0", "p1", "q0", "q1", "q3", "q4"}
    for name in ("p0", "p1", "q0", "q1", "q3", "q4"):
        k = links[name]
        assert k["master"] == "abr" and k["linkinfo"]["info_data"]["persist"] is True
        assert k["ifalias"] == OWNER_ALIAS and k["inet6_addr_gen_mode"] == "none"
