"""Replies kept by message_id, so a resent job is answered without redoing it.

A job whose message_id is still running is not run twice either: the second
delivery waits for the first one's reply. Kept in memory: after a restart a
resent job runs again, which idempotent handlers make safe.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable


class ReplyCache:
    def __init__(self, window_seconds: float, max_entries: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._done: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._running: dict[str, asyncio.Future[bytes]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        """Kept: asyncio.get_running_loop() costs a getpid() per call on Python 3.11."""

    def _expire(self) -> None:
        cutoff = self._clock() - self.window
        while self._done:
            key, (stamp, _) = next(iter(self._done.items()))
            if stamp >= cutoff and len(self._done) <= self.max_entries:
                break
            del self._done[key]

    def get(self, message_id: str) -> bytes | None:
        self._expire()
        entry = self._done.get(message_id)
        return entry[1] if entry is not None else None

    def running(self, message_id: str) -> asyncio.Future[bytes] | None:
        return self._running.get(message_id)

    def start(self, message_id: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        self._running[message_id] = loop.create_future()

    def finish(self, message_id: str, reply: bytes | None, *, keep: bool = True) -> None:
        """Record the reply (None: the job did not finish and must run again).

        `keep=False` (a read-only op): deliveries waiting for this one get its reply,
        a later one reads again. Nothing is repeated by reading twice, and a reply
        such as a 10,000-link host.snapshot (megabytes) is not held for the window."""
        future = self._running.pop(message_id, None)
        if reply is not None and keep and self.window > 0 and self.max_entries > 0:
            self._done[message_id] = (self._clock(), reply)
            self._expire()
        if future is not None and not future.done():
            if reply is None:
                future.cancel()
            else:
                future.set_result(reply)

    def __len__(self) -> int:
        return len(self._done)
