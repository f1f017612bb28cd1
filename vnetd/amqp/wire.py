"""AMQP 0-9-1 frames built with struct: the primitives, and a job's reply, ack or reject.

The one hand-written AMQP encoder of the daemon: the events publisher builds its
publishes on the same primitives (vnetd/events/frames.py).


Every reply the consumer publishes has the same shape: default exchange, routing
key = the job's `reply_to`, mandatory off, a content header with content_type,
headers `{host_id}`, delivery_mode and (when the job had one) correlation_id, and
the body split at the channel's frame size. Building them with pamqp's generic
marshaller (objects, per-field type dispatch) and aio-pika's Message was most of
what a reply cost besides the socket write. tests/unit/test_wire.py checks the
bytes against pamqp's for the same frames.
"""

from __future__ import annotations

import struct

FRAME_METHOD, FRAME_HEADER, FRAME_BODY = 1, 2, 3
FRAME_END = b"\xce"
BASIC = 60
PUBLISH, ACK, REJECT = 40, 80, 90
# basic properties, in wire order: content_type (bit 15), headers (13),
# delivery_mode (12), correlation_id (10), message_id (7)
CONTENT_TYPE, HEADERS, DELIVERY_MODE, CORRELATION_ID, MESSAGE_ID = (
    0x8000, 0x2000, 0x1000, 0x0400, 0x0080)

FRAME = struct.Struct(">BHI")
"""Frame type, channel, payload size."""
HEADER = struct.Struct(">HHQH")
"""Content header: class, weight, body size, property flags."""
_METHOD = struct.Struct(">HH")
_TAG = struct.Struct(">QB")
_LONG = struct.Struct(">I")


def shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"an AMQP short string holds at most 255 bytes: {value[:40]!r}...")
    return bytes((len(raw),)) + raw


def string_table(values: dict[str, str]) -> bytes:
    """A field table of string values (type `S`, a long string each)."""
    items = b"".join(shortstr(k) + b"S" + _LONG.pack(len(raw := v.encode())) + raw
                     for k, v in values.items())
    return _LONG.pack(len(items)) + items


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return FRAME.pack(kind, channel, len(payload)) + payload + FRAME_END


def publish_method(exchange: str, routing_key: str) -> bytes:
    """The payload of a basic.publish method frame (ticket 0, mandatory and immediate off)."""
    return (_METHOD.pack(BASIC, PUBLISH) + b"\x00\x00" + shortstr(exchange)
            + shortstr(routing_key) + b"\x00")


def body_frames(channel: int, body: bytes, max_body: int) -> list[bytes]:
    """A body split into frames of at most `max_body` bytes (frame_max - 8)."""
    return [frame(FRAME_BODY, channel, body[start:start + max_body])
            for start in range(0, len(body), max_body)]


class ReplyFrames:
    """The frames of replies on one channel; what never changes is encoded once."""

    def __init__(self, channel: int, content_type: str, headers: dict[str, str],
                 delivery_mode: int, max_body: int) -> None:
        self.channel = channel
        self.max_body = max_body
        """The largest body frame payload (frame_max - 8)."""
        self._props = (shortstr(content_type) + string_table(headers)
                       + bytes((delivery_mode,)))

    def publish(self, routing_key: str, correlation_id: str | None, body: bytes) -> bytes:
        """Method, header and body frames of one reply (mandatory and immediate off)."""
        method = publish_method("", routing_key)
        flags = CONTENT_TYPE | HEADERS | DELIVERY_MODE
        props = self._props
        if correlation_id:  # pamqp (so aio-pika) leaves an empty one out too
            flags |= CORRELATION_ID
            props += shortstr(correlation_id)
        header = HEADER.pack(BASIC, 0, len(body), flags) + props
        channel = self.channel
        return b"".join([frame(FRAME_METHOD, channel, method), frame(FRAME_HEADER, channel, header),
                         *body_frames(channel, body, self.max_body)])


def ack(channel: int, delivery_tag: int) -> bytes:
    """basic.ack of one delivery (multiple off)."""
    return frame(FRAME_METHOD, channel, _METHOD.pack(BASIC, ACK) + _TAG.pack(delivery_tag, 0))


def reject(channel: int, delivery_tag: int, *, requeue: bool) -> bytes:
    return frame(FRAME_METHOD, channel,
                 _METHOD.pack(BASIC, REJECT) + _TAG.pack(delivery_tag, int(requeue)))
