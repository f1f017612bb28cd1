"""The reply, ack and reject frames built with struct are the bytes pamqp would write."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from vnetd.amqp import wire

short = st.text(max_size=40)


def pamqp_publish(channel: int, routing_key: str, correlation_id: str | None, body: bytes,
                  host_id: str, max_body: int) -> bytes:
    props = commands.Basic.Properties(content_type="application/json",
                                      headers={"host_id": host_id}, delivery_mode=1,
                                      correlation_id=correlation_id)
    frames = [commands.Basic.Publish(exchange="", routing_key=routing_key),
              ContentHeader(body_size=len(body), properties=props)]
    frames += [ContentBody(body[i:i + max_body]) for i in range(0, len(body), max_body)]
    return b"".join(frame.marshal(f, channel) for f in frames)


@given(channel=st.integers(1, 2047), routing_key=short, correlation_id=st.none() | short,
       body=st.binary(min_size=1, max_size=300), host_id=short,
       max_body=st.integers(1, 200))
def test_a_reply_is_what_pamqp_marshals(channel: int, routing_key: str,
                                        correlation_id: str | None, body: bytes,
                                        host_id: str, max_body: int) -> None:
    frames = wire.ReplyFrames(channel, "application/json", {"host_id": host_id}, 1, max_body)
    assert (frames.publish(routing_key, correlation_id, body)
            == pamqp_publish(channel, routing_key, correlation_id, body, host_id, max_body))


@given(channel=st.integers(1, 2047), tag=st.integers(1, 2**63 - 1), requeue=st.booleans())
def test_ack_and_reject_are_what_pamqp_marshals(channel: int, tag: int, requeue: bool) -> None:
    assert wire.ack(channel, tag) == frame.marshal(commands.Basic.Ack(delivery_tag=tag), channel)
    assert wire.reject(channel, tag, requeue=requeue) == frame.marshal(
        commands.Basic.Reject(delivery_tag=tag, requeue=requeue), channel)


def test_a_short_string_over_255_bytes_is_refused() -> None:
    frames = wire.ReplyFrames(1, "application/json", {"host_id": "hv1"}, 1, 1000)
    with pytest.raises(ValueError, match="255 bytes"):
        frames.publish("q" * 256, None, b"{}")
