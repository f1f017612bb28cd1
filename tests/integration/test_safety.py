"""Bad input, ownership refusals, duplicates: clear errors, nothing changed, daemon up."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.support import netns as ns
from tests.support.daemon import DaemonProcess
from tests.support.queues import take_dead_letter
from tests.support.rpc import RawRpc

pytestmark = pytest.mark.integration

BAD_ARGS: list[tuple[str, dict[str, Any], str]] = [
    ("tap.ensure", {"name": "a/b"}, "name"),
    ("tap.ensure", {"name": "x" * 16}, "name"),
    ("tap.ensure", {"name": "has space"}, "name"),
    ("tap.ensure", {"name": "pct%d"}, "name"),
    ("tap.ensure", {"name": ".."}, "name"),
    ("tap.ensure", {"name": "colon:0"}, "name"),
    ("tap.ensure", {"name": "vnet7"}, "name"),
    ("tap.ensure", {"name": "t", "mtu": 67}, "mtu"),
    ("tap.ensure", {"name": "t", "mtu": 65536}, "mtu"),
    ("tap.ensure", {"name": "t", "mtu": "1500"}, "mtu"),
    ("tap.ensure", {"name": "t", "mac": "01:00:5e:00:00:01"}, "mac"),
    ("tap.ensure", {"name": "t", "mac": "zz:00:00:00:00:00"}, "mac"),
    ("tap.ensure", {"name": "t", "unknown_field": 1}, "unknown_field"),
    ("tap.ensure", {}, "name"),
    ("bridge.ensure", {"name": "br", "ageing_time": 0}, "ageing_time"),
    ("bridge.ensure", {"name": "br", "forward_delay": 100}, "forward_delay"),
    ("link.set", {"name": "t"}, "link.set needs"),
    ("nosuch.op", {}, "unknown op"),
    ("batch", {"commands": [{"op": "tap.ensure", "args": {"name": "ok0"}},
                            {"op": "tap.ensure", "args": {"name": "bad/"}}]}, "commands[1]"),
]


@pytest.mark.parametrize(("op", "args", "mentions"), BAD_ARGS)
async def test_bad_args_get_invalid_argument_and_change_nothing(
        rpc: RawRpc, daemon: DaemonProcess, netns: str, op: str, args: dict[str, Any],
        mentions: str) -> None:
    before = set(ns.links(netns))
    reply = await rpc.call(daemon.host_id, op, args)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid_argument"
    assert mentions in reply["error"]["message"]
    assert set(ns.links(netns)) == before  # nothing created, not even batch's valid part
    assert (await rpc.call(daemon.host_id, "host.health"))["ok"] is True


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\"str\"", b"\xff\xfe", b""])
async def test_malformed_bodies_are_answered_and_dead_lettered(
        rpc: RawRpc, daemon: DaemonProcess, amqp_url: str, body: bytes) -> None:
    marker = str(uuid.uuid4())
    reply = await rpc.call_raw(daemon.host_id, body, message_id=marker)
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_argument"
    assert await _dead_lettered(amqp_url, marker)
    assert (await rpc.call(daemon.host_id, "host.health"))["ok"] is True


async def _dead_lettered(amqp_url: str, message_id: str, timeout: float = 5.0) -> bool:
    """Look for message_id in vnetd.dead (messages of other tests are put back)."""
    return await take_dead_letter(amqp_url, message_id, timeout) is not None


async def test_no_reply_to_still_does_the_work(rpc: RawRpc, daemon: DaemonProcess,
                                               netns: str) -> None:
    await rpc.publish_no_reply(daemon.host_id, "tap.ensure", {"name": "quiet0"})
    for _ in range(100):
        if ns.link(netns, "quiet0") is not None:
            break
        await asyncio.sleep(0.05)
    assert ns.link(netns, "quiet0") is not None


async def test_unowned_devices_are_never_changed(rpc: RawRpc, daemon: DaemonProcess,
                                                 netns: str) -> None:
    ns.run_in(netns, "ip", "link", "add", "hostbr", "type", "bridge")
    ns.run_in(netns, "ip", "tuntap", "add", "dev", "hosttap", "mode", "tap")
    ns.run_in(netns, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
    before = ns.links(netns)
    cases = [
        ("bridge.ensure", {"name": "hostbr", "mtu": 1400}, "forbidden"),
        ("bridge.delete", {"name": "hostbr"}, "forbidden"),
        ("tap.ensure", {"name": "hosttap"}, "forbidden"),
        ("tap.delete", {"name": "hosttap"}, "forbidden"),
        ("link.set", {"name": "hosttap", "up": True}, "forbidden"),
        ("link.set", {"name": "lo", "mtu": 1500}, "forbidden"),
        ("tap.ensure", {"name": "lo"}, "forbidden"),
        ("tap.ensure", {"name": "hostbr"}, "conflict"),
        ("tap.ensure", {"name": "new0", "bridge": "hostbr"}, "forbidden"),
        ("tap.ensure", {"name": "new0", "bridge": "nosuchbr"}, "not_found"),
        ("port.attach", {"name": "eth1", "bridge": "hostbr"}, "forbidden"),
        ("tap.delete", {"name": "eth1"}, "conflict"),
        ("bridge.delete", {"name": "hosttap"}, "conflict"),
    ]
    for op, args, code in cases:
        reply = await rpc.call(daemon.host_id, op, args)
        assert reply["ok"] is False, (op, args, reply)
        assert reply["error"]["code"] == code, (op, args, reply)
    after = ns.links(netns)
    assert set(after) == set(before)
    for name in ("hostbr", "hosttap", "eth1", "lo"):
        for key in ("mtu", "flags", "address", "ifalias", "master"):
            assert after[name].get(key) == before[name].get(key), (name, key)
    assert "new0" not in after


async def test_attachable_policy_allows_named_unowned_ports(
        rpc: RawRpc, start_daemon: Any, netns: str) -> None:
    ns.run_in(netns, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth2")
    d = await start_daemon(netns=netns, policy={"attachable": ["eth1"], "protected": ["lo"]})
    await rpc.call(d.host_id, "bridge.ensure", {"name": "br0"})
    ok = await rpc.call(d.host_id, "port.attach", {"name": "eth1", "bridge": "br0"})
    assert ok["ok"] is True and ns.link(netns, "eth1")["master"] == "br0"  # type: ignore[index]
    refused = await rpc.call(d.host_id, "port.attach", {"name": "eth2", "bridge": "br0"})
    assert refused["error"]["code"] == "forbidden"
    # Attaching it did not make it ours: it still cannot be changed or deleted.
    assert (await rpc.call(d.host_id, "link.set", {"name": "eth1", "mtu": 1400}))["ok"] is False
    assert (await rpc.call(d.host_id, "port.detach", {"name": "eth1"}))["ok"] is True


async def test_protected_globs_and_default_route_interface(
        rpc: RawRpc, start_daemon: Any, netns: str) -> None:
    ns.run_in(netns, "ip", "link", "add", "uplink0", "type", "dummy", check=False)
    if ns.link(netns, "uplink0") is None:  # no dummy driver here: a veth end works too
        ns.run_in(netns, "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "upp")
    ns.run_in(netns, "ip", "link", "set", "uplink0", "up")
    ns.run_in(netns, "ip", "addr", "add", "192.0.2.2/24", "dev", "uplink0")
    ns.run_in(netns, "ip", "route", "add", "default", "via", "192.0.2.1", "dev", "uplink0")
    d = await start_daemon(netns=netns, policy={"protected": ["lo", "keep*"]})
    for name in ("uplink0", "keep1"):
        reply = await rpc.call(d.host_id, "bridge.ensure", {"name": name})
        assert reply["error"]["code"] == "forbidden", reply
        assert "protected" in reply["error"]["message"]
    assert ns.link(netns, "keep1") is None


async def test_duplicate_message_id_returns_same_reply_without_redoing(
        rpc: RawRpc, daemon: DaemonProcess, netns: str) -> None:
    mid = str(uuid.uuid4())
    first = await rpc.call(daemon.host_id, "tap.ensure", {"name": "dup0"}, message_id=mid)
    assert first["result"]["created"] is True
    # Delete it behind vnetd's back: a re-run would recreate it; a dedupe must not.
    await rpc.call(daemon.host_id, "tap.delete", {"name": "dup0"})
    second = await rpc.call(daemon.host_id, "tap.ensure", {"name": "dup0"}, message_id=mid)
    assert second == first
    assert ns.link(netns, "dup0") is None
    third = await rpc.call(daemon.host_id, "tap.ensure", {"name": "dup0"},
                           message_id=str(uuid.uuid4()))
    assert third["result"]["created"] is True


async def test_a_resent_read_only_job_reads_again(
        rpc: RawRpc, daemon: DaemonProcess, netns: str) -> None:
    # Read-only replies are not held for the dedupe window (a 10,000-link snapshot is
    # megabytes): a resend with the same message_id answers with the state of now.
    mid = str(uuid.uuid4())
    first = await rpc.call(daemon.host_id, "link.list", {"owned_only": True}, message_id=mid)
    assert "ro0" not in {link["name"] for link in first["result"]["links"]}
    made = await rpc.call(daemon.host_id, "tap.ensure", {"name": "ro0"})
    assert made["ok"] is True, made
    second = await rpc.call(daemon.host_id, "link.list", {"owned_only": True}, message_id=mid)
    assert "ro0" in {link["name"] for link in second["result"]["links"]}


async def test_concurrent_duplicates_run_once(rpc: RawRpc, daemon: DaemonProcess) -> None:
    mid = str(uuid.uuid4())
    body = json.dumps({"op": "tap.ensure", "args": {"name": "dup1"}}).encode()
    replies = await asyncio.gather(*(rpc.call_raw(daemon.host_id, body, message_id=mid)
                                     for _ in range(5)))
    assert all(r == replies[0] for r in replies)
    assert replies[0]["result"]["created"] is True
