"""A structlog renderer that sends events to journald with structured fields."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import structlog

_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


class JournalRenderer:
    def __init__(self) -> None:
        from systemd import journal  # type: ignore[attr-defined]  # systemd-python
        self._send = journal.send

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
        message = str(event.pop("event", ""))
        level = str(event.pop("level", "info"))
        fields = {k.upper(): str(v) for k, v in event.items() if v is not None}
        self._send(message, PRIORITY=str(_PRIORITY.get(level, 6)),
                   SYSLOG_IDENTIFIER="vnetd", **fields)
        raise structlog.DropEvent
