"""The benchmark's lean no-op responder (bench/responder.py) does vnetd's AMQP work.

Deliveries built by pamqp (as a broker sends them) go in, split at arbitrary points;
what comes out must be a reply per job with the job's reply_to and correlation_id,
written before any ack, and a job's ack only after its reply's confirm (one by one or
`multiple`), never after a nack.
"""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands, frame
from pamqp.base import Frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from bench.responder import JobProtocol, reply_props
from vnetd.amqp import wire

REPLY = b'{"ok":true,"result":{"name":"p00000"}}'


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def delivery(tag: int, reply_to: str | None, correlation_id: str | None,
             body: bytes = b'{"op":"tap.ensure","args":{"name":"p1"}}',
             headers: dict[str, str] | None = None) -> bytes:
    props = commands.Basic.Properties(content_type="application/json",
                                      headers=headers,  # type: ignore[arg-type]
                                      delivery_mode=2, priority=3,
                                      correlation_id=correlation_id, reply_to=reply_to,
                                      message_id="m-1")
    frames: list[Frame | ContentHeader | ContentBody] = [
        commands.Basic.Deliver(consumer_tag="ctag-1", delivery_tag=tag,
                               exchange="vnetd.commands", routing_key="host.h"),
        ContentHeader(body_size=len(body), properties=props), ContentBody(body)]
    return b"".join(frame.marshal(f, 1) for f in frames)


def confirm(tag: int, *, multiple: bool = False, ok: bool = True) -> bytes:
    method = (commands.Basic.Ack(delivery_tag=tag, multiple=multiple) if ok else
              commands.Basic.Nack(delivery_tag=tag, multiple=multiple))
    return frame.marshal(method, 1)


async def responder() -> tuple[JobProtocol, Transport]:
    proto = JobProtocol()
    proto.frames = wire.ReplyFrames(1, "application/json", {"host_id": "h"}, 1, 131064)
    proto.reply = REPLY
    transport = Transport()
    proto.transport = transport  # type: ignore[assignment]
    return proto, transport


def feed(proto: JobProtocol, data: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        proto.data_received(data[a:b])


@given(reply_to=st.text(min_size=1, max_size=60), correlation_id=st.none() | st.text(max_size=60),
       headers=st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))
def test_reply_props_reads_what_pamqp_wrote(reply_to: str, correlation_id: str | None,
                                            headers: dict[str, str] | None) -> None:
    raw = delivery(7, reply_to, correlation_id, headers=headers)
    header = 8 + int.from_bytes(raw[3:7])  # the content header frame follows the method's
    assert raw[header] == 2
    assert reply_props(raw, header + 7) == (reply_to, correlation_id or None)


@given(cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_replies_first_each_ack_after_its_confirm(cuts: list[int]) -> None:
    async def main() -> None:
        proto, transport = await responder()
        frames = proto.frames
        assert frames is not None
        jobs = b"".join(delivery(tag, f"amq.gen-{tag}", f"c-{tag}") for tag in (11, 12, 13))
        feed(proto, jobs, cuts)
        assert b"".join(transport.writes) == b"".join(
            frames.publish(f"amq.gen-{tag}", f"c-{tag}", REPLY) for tag in (11, 12, 13))
        assert proto.jobs == 3
        transport.writes.clear()
        # The broker confirms reply 2 alone, then 1 and 3 with multiple, then a stray one.
        feed(proto, confirm(2), cuts)
        assert transport.writes == [wire.ack(1, 12)]
        feed(proto, confirm(3, multiple=True) + confirm(3), cuts)
        assert b"".join(transport.writes[1:]) == wire.ack(1, 11) + wire.ack(1, 13)

    asyncio.run(main())


def test_no_ack_after_a_nack_and_none_without_reply_to() -> None:
    async def main() -> None:
        proto, transport = await responder()
        proto.data_received(delivery(1, "r1", None) + delivery(2, None, "c2"))
        # job 2 asked for no reply: acked at once, in the same write as reply 1
        frames = proto.frames
        assert frames is not None
        assert transport.writes == [wire.ack(1, 2) + frames.publish("r1", None, REPLY)]
        proto.data_received(confirm(1, ok=False))
        assert proto.nacked == 1
        assert len(transport.writes) == 1

    asyncio.run(main())
