"""What the daemon runs besides the job consumer: watchers, publishers, sweeps.

Each component is started in order after the kernel backend and the broker are
up, before READY, and stopped in reverse order after the consumer has drained.

A component that runs long-lived background tasks spawns them in its own
`tasks` (a vnetd.supervisor.TaskTree named after it), never with a bare
asyncio.create_task: the daemon adopts that tree as a branch of its own, so
each task is named, and its unexpected end is logged and reported.
"""

from __future__ import annotations

from typing import Protocol


class Component(Protocol):
    name: str

    async def start(self) -> None:
        """Start; return once the component is really working (e.g. listening)."""

    async def stop(self) -> None:
        """Stop and release everything; must not raise."""
