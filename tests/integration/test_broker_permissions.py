"""Per-host least privilege on a real broker: host A's credentials cannot drive host B.

The users and permissions are what `vnetd broker-permissions` prints, loaded
into the lab broker line by line with rabbitmqctl. Daemon B runs with its own
user and `allowed_senders = [control user]`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import DeliveryError
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed

from tests.support import netns as ns
from tests.support.broker import LabBroker
from tests.support.daemon import DaemonProcess, vnetd_executable
from tests.support.env import Lab
from vnetd.client import VnetClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
def fleet_users(lab: Lab, lab_broker: LabBroker, tmp_path: Any) -> Iterator[dict[str, Any]]:
    tag = secrets.token_hex(3)
    users = {"a": f"pa-{tag}", "b": f"pb-{tag}", "control": f"ctl-{tag}", "sub": f"sub-{tag}"}
    passwords = {u: secrets.token_hex(8) for u in users.values()}
    pw_file = tmp_path / "pw.json"
    pw_file.write_text(json.dumps(passwords))
    # The definitions file: one rabbitmqctl call (each takes seconds here). The
    # rabbitmqctl lines say the same (tests/unit/test_broker_permissions.py).
    out = subprocess.run(
        [vnetd_executable(), "broker-permissions", "--hosts", f"{users['a']},{users['b']}",
         "--control-user", users["control"], "--subscriber-user", users["sub"],
         "--passwords", str(pw_file), "--format", "definitions"],
        capture_output=True, text=True, check=True).stdout
    defs = lab.dir / f"definitions-{tag}.json"
    defs.write_text(out)
    defs.chmod(0o644)
    lab_broker.ctl("import_definitions", str(defs))
    port = lab_broker.port
    urls = {k: f"amqp://{u}:{passwords[u]}@127.0.0.1:{port}/" for k, u in users.items()}
    try:
        yield {"users": users, "urls": urls}
    finally:
        for u in users.values():
            lab_broker.ctl("delete_user", u)
        defs.unlink()


async def _refused(coro: Any) -> str:
    try:
        await coro
    except (ChannelAccessRefused, ChannelPreconditionFailed, DeliveryError,
            aio_pika.exceptions.ChannelClosed) as exc:
        return str(exc)
    raise AssertionError("the broker allowed it")


async def test_host_credentials_cannot_drive_another_host(
        lab: Lab, fleet_users: dict[str, Any], netns: str) -> None:
    users, urls = fleet_users["users"], fleet_users["urls"]
    host_b = users["b"]
    d = DaemonProcess(host_id=host_b, amqp_url=urls["control"], netns=netns,
                      workdir=lab.dir / "daemons" / host_b,
                      extra={"amqp": {"url": urls["b"],
                                      "allowed_senders": [users["control"]]}})
    await d.start(wait_ready=False)
    try:
        async with VnetClient(urls["control"]) as control:
            # ready once it answers; a daemon that cannot start exits, and the
            # resent health check times out
            health = await control.call(host_b, "host.health", timeout=60, resend_every=1)
            assert health.ok, health
            assert (await control.call(host_b, "bridge.ensure", {"name": "br0"})).ok

        conn = await aio_pika.connect(urls["a"])
        async with conn:
            # 1. consuming host B's queue
            ch = await conn.channel()
            queue = await ch.get_queue(f"vnetd.host.{host_b}", ensure=False)
            async def take(_m: AbstractIncomingMessage) -> None:
                raise AssertionError("A read a job of B")
            why = await _refused(queue.consume(take))
            assert "ACCESS_REFUSED" in why, why
            # ... nor a copy of B's jobs through a binding of A's own queue
            ch = await conn.channel()
            own = await ch.declare_queue(f"vnetd.host.{users['a']}", durable=True,
                                         arguments={"x-queue-type": "quorum"})
            why = await _refused(own.bind("vnetd.commands", routing_key=f"host.{host_b}"))
            assert "ACCESS_REFUSED" in why, why
            # 2. publishing a command
            ch = await conn.channel(publisher_confirms=True)
            commands = await ch.get_exchange("vnetd.commands", ensure=False)
            job = aio_pika.Message(json.dumps({"op": "tap.ensure",
                                               "args": {"name": "evil0"}}).encode(),
                                   content_type="application/json")
            why = await _refused(commands.publish(job, routing_key=f"host.{host_b}"))
            assert "ACCESS_REFUSED" in why, why
            # 3. publishing an event under host B's id (A's own id is allowed: the control)
            ch = await conn.channel(publisher_confirms=True)
            events = await ch.get_exchange("vnetd.events", ensure=False)
            await events.publish(aio_pika.Message(b"{}"), routing_key=f"{users['a']}.link.added")
            why = await _refused(events.publish(aio_pika.Message(b"{}"),
                                                routing_key=f"{host_b}.link.added"))
            assert "ACCESS_REFUSED" in why, why
            # 4. the default exchange (needed for replies) reaches B's queue by name:
            #    the job carries user_id A, which RabbitMQ vouches for, and B refuses it.
            # (A may declare no queue but its own: the answer comes back there)
            ch = await conn.channel(publisher_confirms=True)
            replies = await ch.declare_queue(f"vnetd.host.{users['a']}", durable=True,
                                             arguments={"x-queue-type": "quorum"})
            corr = str(uuid.uuid4())
            await ch.default_exchange.publish(aio_pika.Message(
                json.dumps({"op": "tap.ensure", "args": {"name": "evil1", "bridge": "br0"}})
                .encode(), content_type="application/json", correlation_id=corr,
                reply_to=replies.name, user_id=users["a"], message_id=str(uuid.uuid4())),
                routing_key=f"vnetd.host.{host_b}")
            answer = None
            for _ in range(300):
                answer = await replies.get(fail=False)
                if answer is not None:
                    break
                await asyncio.sleep(0.1)
            assert answer is not None, "no answer to the forged job"
            body = json.loads(answer.body)
            assert body["ok"] is False and body["error"]["code"] == "forbidden", body
            # ... and a user_id that is not A's own login is refused by the broker itself
            why = await _refused(ch.default_exchange.publish(aio_pika.Message(
                b"{}", user_id=users["control"]), routing_key=f"vnetd.host.{host_b}"))
            assert "PRECONDITION_FAILED" in why or "user_id" in why, why
        assert "evil0" not in ns.links(netns) and "evil1" not in ns.links(netns)
        # the control plane still drives B
        async with VnetClient(urls["control"]) as control:
            r = await control.call(host_b, "tap.ensure", {"name": "good0", "bridge": "br0"})
            assert r.ok, r
        assert "good0" in ns.links(netns)
    finally:
        await d.stop()
        guest = await aio_pika.connect(lab.amqp_url)
        async with guest:
            ch = await guest.channel()
            for q in (f"vnetd.host.{users['a']}", f"vnetd.host.{host_b}",
                      f"vnetd.retry.{host_b}"):
                await ch.queue_delete(q)
