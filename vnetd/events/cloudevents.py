"""CloudEvents 1.0 structured JSON encoding of vnetd events.

One place knows the envelope: `type` is `io.vnetd.<type>`, `source`
`vnetd://<host_id>`, and the extension attributes `sequence` (per-host counter,
+1 for every event of an epoch) and `epoch` (changes every daemon start).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

CONTENT_TYPE = "application/cloudevents+json"
SPECVERSION = "1.0"
TYPE_PREFIX = "io.vnetd."


@dataclass(frozen=True, slots=True)
class Event:
    """One numbered event, before encoding."""

    sequence: int
    type: str
    """Dotted vnetd type, e.g. "link.changed" (without the io.vnetd. prefix)."""
    subject: str | None
    data: dict[str, Any]
    time: float
    """Seconds since the Unix epoch when it was emitted."""


def source_of(host_id: str) -> str:
    return f"vnetd://{host_id}"


def routing_key(host_id: str, type: str) -> str:
    return f"{host_id}.{type}"


def event_id(epoch: str, sequence: int) -> str:
    return f"{epoch}-{sequence}"


def envelope(event: Event, host_id: str, epoch: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event_id(epoch, event.sequence),
        "source": source_of(host_id),
        "type": TYPE_PREFIX + event.type,
        "time": datetime.fromtimestamp(event.time, UTC).isoformat(timespec="microseconds")
        .replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "sequence": event.sequence,
        "epoch": epoch,
        "data": event.data,
    }
    if event.subject is not None:
        body["subject"] = event.subject
    return body


def encode(event: Event, host_id: str, epoch: str) -> bytes:
    return orjson.dumps(envelope(event, host_id, epoch))


def decode(body: bytes) -> dict[str, Any]:
    """Parse and check the required attributes of a structured CloudEvent (for clients)."""
    data = orjson.loads(body)
    if not isinstance(data, dict):
        raise TypeError("a CloudEvent must be a JSON object")
    for key in ("specversion", "id", "source", "type"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ValueError(f"CloudEvent attribute {key!r} missing or not a string")
    if data["specversion"] != SPECVERSION:
        raise ValueError(f"unsupported specversion {data['specversion']!r}")
    return data
