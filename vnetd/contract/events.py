"""The event side of the contract: the sink every producer of events writes to.

Producers (the netlink and libvirt watchers, the job consumer, cleanup) call
`emit`; it never blocks and never fails the caller. The events machinery
(`vnetd.events`) numbers, encodes and publishes what is emitted.
"""

from __future__ import annotations

from typing import Any, Protocol


class EventSink(Protocol):
    def emit(self, type: str, subject: str | None, data: dict[str, Any]) -> None:
        """Queue one event of `type` (dotted, e.g. "link.added") about `subject`."""


class NullSink:
    """Drops every event: for tests and for a daemon with events disabled."""

    def emit(self, type: str, subject: str | None, data: dict[str, Any]) -> None:
        return None
