"""Smoke tests of the lab itself (no daemon): namespaces, broker, the support code."""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import aio_pika
import pytest

from tests.support import netns as netns_mod
from tests.support.broker import LabBroker
from tests.support.env import Lab, in_root_netns, root_netns_inodes
from tests.support.rpc import RawRpc, UnroutableError

pytestmark = pytest.mark.integration


def _ino(path: str) -> int:
    return os.stat(path).st_ino


def test_process_runs_in_the_lab_not_the_root_namespace(lab: Lab) -> None:
    me = _ino("/proc/self/ns/net")
    assert not in_root_netns()
    assert me not in root_netns_inodes()
    assert me == _ino(f"/run/netns/{lab.netns}")


def test_lab_has_only_loopback_up(lab: Lab) -> None:
    links = netns_mod.ip_json(lab.netns, "link", "show")
    lo = next(link for link in links if link["ifname"] == "lo")
    assert "UP" in lo["flags"]


def test_fixture_namespace_exists_with_lo_up(lab: Lab, netns: str) -> None:
    assert netns.startswith(f"vt-{lab.suffix}-")
    assert netns in netns_mod.list_ours()
    ino = _ino(f"/run/netns/{netns}")
    assert ino != _ino("/proc/self/ns/net")
    assert ino not in root_netns_inodes()
    lo = netns_mod.link(netns, "lo")
    assert lo is not None
    assert "UP" in lo["flags"]
    assert [link["ifname"] for link in netns_mod.ip_json(netns, "link", "show")] == ["lo"]
    out = netns_mod.run_in(netns, "ping", "-c", "1", "-W", "2", "127.0.0.1").stdout
    assert "1 received" in out


def test_namespace_factory_cleans_up(netns_factory: netns_mod.NetnsFactory) -> None:
    a, b = netns_factory(), netns_factory()
    assert a != b
    assert _ino(f"/run/netns/{a}") != _ino(f"/run/netns/{b}")
    netns_factory.cleanup()
    assert not netns_mod.exists(a)
    assert not netns_mod.exists(b)


async def test_broker_round_trip_through_a_queue(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("", exclusive=True)
        body = uuid.uuid4().bytes
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue.name)
        message = await queue.get(timeout=5, fail=True)
        assert message is not None
        await message.ack()
        assert message.body == body


async def _fake_host(
    amqp_url: str, exchange_name: str, host_id: str
) -> aio_pika.abc.AbstractConnection:
    """A stand-in responder speaking the contract: echoes op/args, errors on bad JSON."""
    conn = await aio_pika.connect(amqp_url)
    ch = await conn.channel()
    ex = await ch.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, auto_delete=True)
    q = await ch.declare_queue("", exclusive=True)
    await q.bind(ex, routing_key=f"host.{host_id}")

    async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with msg.process():
            try:
                req = json.loads(msg.body)
                reply = {
                    "ok": True,
                    "result": {"op": req["op"], "args": req["args"], "message_id": msg.message_id},
                }
            except (ValueError, KeyError, TypeError) as exc:
                reply = {
                    "ok": False,
                    "error": {"code": "bad_request", "message": str(exc), "details": {}},
                }
            if msg.reply_to:
                await ch.default_exchange.publish(
                    aio_pika.Message(
                        json.dumps(reply).encode(),
                        content_type="application/json",
                        correlation_id=msg.correlation_id,
                    ),
                    routing_key=msg.reply_to,
                )

    await q.consume(on_message)
    return conn


async def test_raw_rpc_client_against_a_stand_in_host(amqp_url: str) -> None:
    exchange = f"vt-selftest-{uuid.uuid4().hex[:8]}"
    responder = await _fake_host(amqp_url, exchange, "h1")
    try:
        async with RawRpc(amqp_url, exchange=exchange) as rpc:
            reply = await rpc.call("h1", "host.health", {"x": 1}, message_id="m-1")
            assert reply == {
                "ok": True,
                "result": {"op": "host.health", "args": {"x": 1}, "message_id": "m-1"},
            }
            bad = await rpc.call_raw("h1", b"{not json", "application/json")
            assert bad["ok"] is False
            assert bad["error"]["code"] == "bad_request"
            many = await rpc.call_many(
                "h1", [("op.n", {"i": i}) for i in range(50)], concurrency=16
            )
            assert [r["result"]["args"]["i"] for r in many] == list(range(50))
            await rpc.publish_no_reply("h1", "op.fire", {})
            with pytest.raises(UnroutableError):
                await rpc.call("nobody", "host.health", timeout=2)
    finally:
        await responder.close()


@pytest.mark.slow
async def test_lab_broker_can_be_restarted_from_python(
    amqp_url: str, lab_broker: LabBroker
) -> None:
    assert await lab_broker.ais_up()
    conn = await aio_pika.connect(amqp_url)
    closed = asyncio.Event()
    conn.close_callbacks.add(lambda *_: closed.set())
    try:
        await lab_broker.arestart(app_only=True)  # every connection is forced closed
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        await conn.close()
    assert await lab_broker.ais_up()
    await lab_broker.akill()
    assert not await lab_broker.ais_up()
    await lab_broker.astart()
    async with await aio_pika.connect(amqp_url) as again:
        assert not again.is_closed
    assert lab_broker.node in await lab_broker.actl("status")
