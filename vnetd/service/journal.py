"""A structlog renderer that sends events to journald with structured fields.

Every event becomes one journal entry: MESSAGE is the event name (plus a short
summary of the job for `job` lines), PRIORITY follows the level,
SYSLOG_IDENTIFIER is "vnetd", and each key of the event is a field
(`op` -> OP, `correlation_id` -> CORRELATION_ID, `interface` -> INTERFACE, ...).
Key events carry a stable MESSAGE_ID, so `journalctl MESSAGE_ID=...` finds them
across restarts and hosts (see MESSAGE_IDS).
"""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "critical": 2,
            "exception": 3}
SYSLOG_IDENTIFIER = "vnetd"

# Stable ids of the events an operator looks for (journalctl MESSAGE_ID=<id>).
MESSAGE_IDS: dict[str, str] = {
    "ready": "b5ad21ae74624b0996c83d592ecd967c",
    "stopping": "de5a25ac53134d4b83d80d1cc272a831",
    "stopped": "eaf22b14e9e64a28b19538533a564d93",
    "drain_timeout": "720af3cb897b42b4a0e418174fa2cefb",
    "resync": "3c7362e4330a48e78064db5528725078",
    "netlink_overrun": "0ab8853ccfea4859ba5abd1522b85bc8",
    "broker_connection_lost": "cfad715ddcbc447dac9e75b81d751121",
    "broker_reconnected": "4ca95d77c20245bf891ee25dcf0f3ddc",
    "libvirt_connection_lost": "567d124a3b93438b8a3dbdfce2f1b7e5",
    "libvirt_connected": "d74345eac7db490bae8df28b7988d4e0",
    "health_changed": "691c9e4ab7274328b06489658e200e74",
    "events_dropped": "f441840f9d1c45988e6b29da0227b421",
    "cleanup_pass": "d2f0dec7257b42539e096d103964141c",
}

_BAD_CHARS = re.compile(r"[^A-Z0-9_]")
# Fields journald sets itself or that this renderer sets: never taken from an event.
_RESERVED = frozenset({"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "MESSAGE_ID"})


def field_name(key: str) -> str:
    """A journal field name: upper case [A-Z0-9_], not starting with `_` or a digit."""
    name = _BAD_CHARS.sub("_", key.upper()).lstrip("_")
    if not name or name[0].isdigit():
        name = "F_" + name
    if name in _RESERVED:
        name = "VNETD_" + name
    return name[:64]


def _message(event: str, fields: MutableMapping[str, Any]) -> str:
    if event == "job":
        outcome = "ok" if fields.get("ok") else f"failed: {fields.get('error')}"
        subject = f" {fields['interface']}" if fields.get("interface") else ""
        return f"job {fields.get('op')}{subject} {outcome} in {fields.get('duration_ms')} ms"
    return event


def journal_fields(event: MutableMapping[str, Any]) -> dict[str, str]:
    """The journal entry for one structlog event dict (pure: testable without journald)."""
    name = str(event.pop("event", ""))
    level = str(event.pop("level", "info"))
    event.pop("timestamp", None)  # journald stamps every entry itself
    fields = {field_name(k): str(v) for k, v in event.items() if v is not None}
    fields["MESSAGE"] = _message(name, event)
    fields["PRIORITY"] = str(PRIORITY.get(level, 6))
    fields["SYSLOG_IDENTIFIER"] = SYSLOG_IDENTIFIER
    fields["EVENT"] = name
    if name in MESSAGE_IDS:
        fields["MESSAGE_ID"] = MESSAGE_IDS[name]
    return fields


class JournalRenderer:
    def __init__(self, send: Callable[..., object] | None = None) -> None:
        if send is None:
            from systemd import journal  # type: ignore[attr-defined]  # systemd-python
            send = journal.send
        self._send = send

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
        fields = journal_fields(event)
        message = fields.pop("MESSAGE")
        self._send(message, **fields)
        raise structlog.DropEvent
