"""AMQP 0-9-1 wire frames of one event `basic.publish`, on the primitives of vnetd/amqp/wire.py.

The publisher writes many events per socket write; building their frames with
pamqp's generic marshaller (objects, per-field type dispatch) was the largest
part of its CPU per event (~3.5 of ~8 s for 20,000 events under a profile). A
publish of ours always has the same shape: the method (exchange, routing key,
mandatory off), a content header with three properties (content_type,
delivery_mode, message_id) and the body split at the connection's frame size.
tests/unit/test_events_frames.py checks the bytes against pamqp's for the same
frames.
"""

from __future__ import annotations

from vnetd.amqp.wire import (
    BASIC,
    CONTENT_TYPE,
    DELIVERY_MODE,
    FRAME,
    FRAME_BODY,
    FRAME_END,
    FRAME_HEADER,
    FRAME_METHOD,
    HEADER,
    MESSAGE_ID,
    body_frames,
    frame,
    publish_method,
    shortstr,
)

FLAGS = CONTENT_TYPE | DELIVERY_MODE | MESSAGE_ID
"""The properties of an event's publish: content_type, delivery_mode, message_id."""


def publish(channel: int, exchange: str, routing_key: str, content_type: str,
            delivery_mode: int, message_id: str, body: bytes, max_body: int) -> bytes:
    """The method, header and body frames of one publish (mandatory and immediate off);
    `max_body` is the largest body frame payload (frame_max - 8)."""
    header = (HEADER.pack(BASIC, 0, len(body), FLAGS) + shortstr(content_type)
              + bytes((delivery_mode,)) + shortstr(message_id))
    return b"".join([frame(FRAME_METHOD, channel, publish_method(exchange, routing_key)),
                     frame(FRAME_HEADER, channel, header), *body_frames(channel, body, max_body)])


class Publishes:
    """`publish` for one channel, exchange, content type and delivery mode, with the
    parts that do not change from message to message built once: the method frame of
    each routing key (an event type has one) and the content type's bytes. The same
    bytes as `publish` (tests/unit/test_events_frames.py)."""

    def __init__(self, channel: int, exchange: str, content_type: str, delivery_mode: int,
                 max_body: int) -> None:
        self.channel = channel
        self.exchange = exchange
        self.max_body = max_body
        self._props = shortstr(content_type) + bytes((delivery_mode,))
        self._methods: dict[str, bytes] = {}

    def method(self, routing_key: str) -> bytes:
        try:
            return self._methods[routing_key]
        except KeyError:
            pass
        if len(self._methods) > 4096:  # bounded: routing keys are host + event type
            self._methods.clear()
        method = self._methods[routing_key] = frame(
            FRAME_METHOD, self.channel, publish_method(self.exchange, routing_key))
        return method

    def build(self, routing_key: str, message_id: str, body: bytes) -> bytes:
        mid = message_id.encode()
        if len(mid) > 255:
            raise ValueError(f"an AMQP short string holds at most 255 bytes: {message_id[:40]!r}")
        props = self._props
        channel = self.channel
        size = len(body)
        parts = [self.method(routing_key),
                 FRAME.pack(FRAME_HEADER, channel, 14 + len(props) + 1 + len(mid)),
                 HEADER.pack(BASIC, 0, size, FLAGS), props, bytes((len(mid),)), mid,
                 FRAME_END]
        if 0 < size <= self.max_body:
            parts += (FRAME.pack(FRAME_BODY, channel, size), body, FRAME_END)
        elif size:
            parts += body_frames(channel, body, self.max_body)
        return b"".join(parts)
