"""AMQP 0-9-1 wire frames of one `basic.publish`, built with struct.

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

import struct

FRAME_METHOD, FRAME_HEADER, FRAME_BODY = 1, 2, 3
FRAME_END = b"\xce"
BASIC_CLASS, BASIC_PUBLISH = 60, 40
# basic properties, in wire order: content_type (bit 15), delivery_mode (bit 12),
# message_id (bit 7)
FLAGS = 0x8000 | 0x1000 | 0x0080

_FRAME = struct.Struct(">BHI")
_METHOD = struct.Struct(">HHH")
_HEADER = struct.Struct(">HHQH")


def shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"an AMQP short string holds at most 255 bytes: {value[:40]!r}...")
    return bytes((len(raw),)) + raw


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME.pack(kind, channel, len(payload)) + payload + FRAME_END


def publish(channel: int, exchange: str, routing_key: str, content_type: str,
            delivery_mode: int, message_id: str, body: bytes, max_body: int) -> bytes:
    """The method, header and body frames of one publish (mandatory and immediate off);
    `max_body` is the largest body frame payload (frame_max - 8)."""
    method = (_METHOD.pack(BASIC_CLASS, BASIC_PUBLISH, 0) + shortstr(exchange)
              + shortstr(routing_key) + b"\x00")
    header = (_HEADER.pack(BASIC_CLASS, 0, len(body), FLAGS) + shortstr(content_type)
              + bytes((delivery_mode,)) + shortstr(message_id))
    parts = [_frame(FRAME_METHOD, channel, method), _frame(FRAME_HEADER, channel, header)]
    for start in range(0, len(body), max_body):
        parts.append(_frame(FRAME_BODY, channel, body[start:start + max_body]))
    return b"".join(parts)


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
        method = (_METHOD.pack(BASIC_CLASS, BASIC_PUBLISH, 0) + shortstr(self.exchange)
                  + shortstr(routing_key) + b"\x00")
        if len(self._methods) > 4096:  # bounded: routing keys are host + event type
            self._methods.clear()
        frame = self._methods[routing_key] = _frame(FRAME_METHOD, self.channel, method)
        return frame

    def build(self, routing_key: str, message_id: str, body: bytes) -> bytes:
        mid = message_id.encode()
        if len(mid) > 255:
            raise ValueError(f"an AMQP short string holds at most 255 bytes: {message_id[:40]!r}")
        props = self._props
        channel = self.channel
        size = len(body)
        parts = [self.method(routing_key),
                 _FRAME.pack(FRAME_HEADER, channel, 14 + len(props) + 1 + len(mid)),
                 _HEADER.pack(BASIC_CLASS, 0, size, FLAGS), props, bytes((len(mid),)), mid,
                 FRAME_END]
        if 0 < size <= self.max_body:
            parts += (_FRAME.pack(FRAME_BODY, channel, size), body, FRAME_END)
        elif size:
            for start in range(0, size, self.max_body):
                parts.append(_frame(FRAME_BODY, channel, body[start:start + self.max_body]))
        return b"".join(parts)
