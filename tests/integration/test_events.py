"""The event stream end to end: external `ip` changes in the daemon's namespace reach a
subscriber through RabbitMQ as CloudEvents with contiguous sequences."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.events_subscriber import LinkFollower, Subscriber
from tests.support import netns as netns_mod
from tests.support.broker import LabBroker
from tests.support.daemon import DaemonProcess
from tests.support.env import Lab
from tests.support.rpc import RawRpc

pytestmark = pytest.mark.integration


def ip(ns: str, *args: str) -> None:
    netns_mod._run(["ip", "-n", ns, *args])


def assert_contiguous(events: list[int]) -> None:
    assert events == list(range(events[0], events[0] + len(events))), events


def kernel_links(ns: str) -> dict[int, dict[str, object]]:
    out = {}
    for e in netns_mod.ip_json(ns, "-d", "link", "show"):
        out[e["ifindex"]] = e
    return out


async def test_external_changes_become_events(start_daemon, lab: Lab, netns: str,
                                              amqp_url: str, rpc: RawRpc) -> None:
    host = DaemonProcess.new_host_id(lab.suffix)
    async with Subscriber(amqp_url, host) as sub:
        d = await start_daemon(netns=netns, host_id=host, events={"heartbeat_seconds": 1.0})
        started = await sub.wait_type("host.started")
        assert started.content_type == "application/cloudevents+json"
        ev = started.event
        assert ev["specversion"] == "1.0"
        assert ev["source"] == f"vnetd://{host}"
        assert ev["type"] == "io.vnetd.host.started"
        assert started.routing_key == f"{host}.host.started"
        epoch = ev["epoch"]

        ip(netns, "tuntap", "add", "dev", "evtap0", "mode", "tap")
        added = await sub.wait_type("link.added", "evtap0")
        assert added.data["kind"] == "tap"
        assert added.data["state"] == "down"
        assert added.data["owned"] is False
        assert added.routing_key == f"{host}.link.added"
        index = added.data["index"]

        n = len(sub.received)
        ip(netns, "link", "set", "evtap0", "up")
        up = await sub.wait_type("link.changed", "evtap0", start=n)
        assert "state" in up.data["changes"]
        assert up.data["state"] == "up"
        assert up.data["previous"]["state"] == "down"

        n = len(sub.received)
        ip(netns, "link", "set", "evtap0", "mtu", "1400")
        mtu = await sub.wait_type("link.changed", "evtap0", start=n)
        assert mtu.data["changes"] == ["mtu"]
        assert mtu.data["mtu"] == 1400
        assert mtu.data["previous"] == {"mtu": 1500}

        ip(netns, "link", "add", "evbr0", "type", "bridge")
        br = await sub.wait_type("link.added", "evbr0")
        assert br.data["kind"] == "bridge"
        n = len(sub.received)
        ip(netns, "link", "set", "evtap0", "master", "evbr0")
        attach = await sub.wait_for(
            lambda r: r.type == "link.changed" and r.event.get("subject") == "evtap0"
            and "master" in r.data["changes"], start=n)
        assert attach.data["master"] == "evbr0"
        assert attach.data["previous"]["master"] is None

        n = len(sub.received)
        ip(netns, "link", "set", "evtap0", "nomaster")
        detach = await sub.wait_for(
            lambda r: r.type == "link.changed" and r.event.get("subject") == "evtap0"
            and "master" in r.data["changes"], start=n)
        assert detach.data["master"] is None

        n = len(sub.received)
        ip(netns, "addr", "add", "192.0.2.1/24", "dev", "evbr0")
        addr = await sub.wait_type("address.added", "evbr0", start=n)
        assert addr.data["address"] == "192.0.2.1"
        assert addr.data["prefixlen"] == 24
        assert addr.data["family"] == "inet"
        ip(netns, "addr", "del", "192.0.2.1/24", "dev", "evbr0")
        await sub.wait_type("address.removed", "evbr0", start=n)

        ip(netns, "link", "del", "evtap0")
        removed = await sub.wait_type("link.removed", "evtap0")
        assert removed.data["index"] == index

        # A job's outcome is an event too (after the kernel's own events).
        reply = await rpc.call(host, "bridge.ensure", {"name": "evbr1"})
        assert reply["ok"], reply
        done = await sub.wait_type("command.completed", "evbr1")
        assert done.data["op"] == "bridge.ensure"
        assert done.data["result"]["name"] == "evbr1"
        failed = await rpc.call(host, "bridge.delete", {"name": "evbr0"})  # not vnetd's
        assert not failed["ok"]
        f = await sub.wait_type("command.failed", "evbr0")
        assert f.data["error"]["code"] == "forbidden"

        await sub.wait_type("host.heartbeat", timeout=5)

        # One change gives one event: nothing about evtap0 twice in a row unchanged.
        tap_events = [r for r in sub.received if r.event.get("subject") == "evtap0"]
        assert [r.type for r in tap_events][:1] == ["link.added"]
        for r in tap_events:
            if r.type == "link.changed":
                assert r.data["changes"], r.event

        # Snapshot: position + state agree with the kernel.
        snap = await rpc.call(host, "host.snapshot", {})
        assert snap["ok"], snap
        pos = snap["result"]["events"]
        assert pos["epoch"] == epoch
        names = {link["name"] for link in snap["result"]["links"]}
        assert names == {e["ifname"] for e in kernel_links(netns).values()}
        await sub.quiet(0.3)
        seqs = [r.seq for r in sub.received]
        assert seqs[0] == 1
        assert_contiguous(seqs)
        assert pos["sequence"] <= seqs[-1]
        assert all(r.event["epoch"] == epoch for r in sub.received)

        # A restart: host.stopping, then a new epoch starting at sequence 1.
        n = len(sub.received)
        await d.restart()
        stopping = await sub.wait_type("host.stopping", start=n)
        assert stopping.event["epoch"] == epoch
        again = await sub.wait_type("host.started", start=n)
        assert again.event["epoch"] != epoch
        assert again.seq == 1


async def test_snapshot_then_events_follow_the_kernel(start_daemon, lab: Lab, netns: str,
                                                      amqp_url: str, rpc: RawRpc) -> None:
    """Snapshot while changes are under way; the follower ends equal to the kernel."""
    host = DaemonProcess.new_host_id(lab.suffix)
    async with Subscriber(amqp_url, host) as sub:
        await start_daemon(netns=netns, host_id=host)
        await sub.wait_type("host.started")
        batch = "".join(f"link add sv{i} type veth peer name sw{i}\n" for i in range(100))
        proc = asyncio.create_task(asyncio.to_thread(
            netns_mod._run, ["ip", "-n", netns, "-batch", "-"], input=batch))
        # Snapshot once the changes are visibly under way (the first veth is in events).
        await sub.wait_type("link.added", "sv0", timeout=30)
        snap = await rpc.call(host, "host.snapshot", {})
        await proc
        follower = LinkFollower()
        follower.load_snapshot(snap["result"])
        await sub.quiet(0.5)
        for r in sub.received:
            follower.apply(r.event)
        assert not follower.gaps
        assert {v["name"] for v in follower.links.values()} == \
            {e["ifname"] for e in kernel_links(netns).values()}


async def test_vnetctl_events_prints_one_line_per_event(start_daemon, lab: Lab, netns: str,
                                                        lab_broker: LabBroker,
                                                        amqp_url: str) -> None:
    import sys
    from pathlib import Path
    host = DaemonProcess.new_host_id(lab.suffix)
    await start_daemon(netns=netns, host_id=host)
    vnetctl = str(Path(sys.executable).parent / "vnetctl")
    proc = await asyncio.create_subprocess_exec(
        vnetctl, "--url", amqp_url, "events", "--host", host, "--type", "link.*",
        "--count", "2", "--timeout", "20", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    # Wait until it has bound its queue (events before that are not its to see).
    deadline = time.monotonic() + 30
    while f"vnetd.events\t{host}.#" not in await lab_broker.actl(
            "list_bindings", "source_name", "routing_key"):
        assert time.monotonic() < deadline, "vnetctl events never bound its queue"
        assert proc.returncode is None, "vnetctl events exited before binding"
        await asyncio.sleep(0.2)
    assert proc.stdout is not None
    # Each change once the line of the one before is printed: two changes close
    # together may be merged into one event (one event per change of state).
    ip(netns, "tuntap", "add", "dev", "clitap", "mode", "tap")
    first = await asyncio.wait_for(proc.stdout.readline(), 20)
    ip(netns, "link", "set", "clitap", "mtu", "1300")
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    lines = [first.decode().rstrip("\n"), *out.decode().splitlines()]
    assert len(lines) == 2, lines
    assert f" {host} #" in lines[0] and " link.added clitap tap down mtu 1500" in lines[0]
    # (the kernel does not notify TUNSETPERSIST nor the carrier drop of a down TAP:
    # the next notification carries them, so they may appear in this line too)
    assert "link.changed clitap " in lines[1] and "mtu 1500->1300" in lines[1]
