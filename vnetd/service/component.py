"""What the daemon runs besides the job consumer: watchers, publishers, sweeps.

Each component is started in order after the kernel backend and the broker are
up, before READY, and stopped in reverse order after the consumer has drained.
"""

from __future__ import annotations

from typing import Protocol


class Component(Protocol):
    name: str

    async def start(self) -> None:
        """Start; return once the component is really working (e.g. listening)."""

    async def stop(self) -> None:
        """Stop and release everything; must not raise."""
