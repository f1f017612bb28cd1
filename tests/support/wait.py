"""Waiting for the condition a test is about, not for a guessed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], object], what: str, timeout: float = 5.0,
                poll: float = 0.0) -> None:
    """Return as soon as `condition()` is true; fail after `timeout` seconds.

    `poll` 0 yields to the event loop between checks (for conditions that other
    tasks of the same loop make true), a positive value sleeps that long (for
    conditions set by other processes or threads).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(poll)
