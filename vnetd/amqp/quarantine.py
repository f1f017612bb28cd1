"""Crash quarantine: find the job that kills the daemon, and keep it from taking others down.

The broker's delivery limit alone is a blunt backstop: when the daemon dies, every
job in flight is returned and counted, so a poison message drags innocent jobs to
the dead-letter queue with it. vnetd does better with a flight recorder:

- Before a job runs, a line `S <key>` is appended to `<state_dir>/inflight.log`,
  and `E <key>` once it is settled. A plain write survives kill -9 (the page
  cache belongs to the kernel); a clean shutdown truncates the file.
- At start, keys started but never ended were in flight when the daemon died:
  each gets a crash count, and a count of crashes in which it ran alone.
- A suspect (crashed before) runs in isolation: after the jobs delivered with it
  have finished, alone, while new jobs wait. Innocent jobs get done and acked
  first; the next crash, if any, is the suspect's own.
- A job that crashed the daemon while running alone `threshold` times is
  poison: it is answered `internal` and dead-lettered without running again.

A key is the message_id, or a hash of the body and reply properties.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("vnetd.quarantine")

SETTLE_SECONDS = 0.05
"""How long a suspect lets the jobs delivered with it start before it isolates."""


def job_key(message_id: str | None, body: bytes, correlation_id: str | None,
            reply_to: str | None) -> str:
    if message_id:
        return "m:" + message_id.replace("\n", " ")[:200]
    digest = hashlib.sha256(body)
    digest.update(f"\0{correlation_id}\0{reply_to}".encode())
    return "h:" + digest.hexdigest()[:32]


@dataclass
class Suspicion:
    crashes: int = 0
    alone: int = 0


class FlightRecorder:
    """The on-disk record of which jobs were running, and what it says after a crash."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.log_path = state_dir / "inflight.log"
        self.suspects_path = state_dir / "suspects.json"
        self._fd: int | None = None

    def open(self) -> dict[str, Suspicion]:
        """Read what the last run left, record its crash, and start a fresh log."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        suspects = self._load_suspects()
        open_keys = self._open_keys()
        for key in open_keys:
            s = suspects.setdefault(key, Suspicion())
            s.crashes += 1
            if len(open_keys) == 1:
                s.alone += 1
        if open_keys:
            log.warning("crash_detected", jobs_in_flight=len(open_keys),
                        suspects={k: vars(v) for k, v in suspects.items() if k in open_keys})
        self._save_suspects(suspects)
        self._fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                           | os.O_CLOEXEC, 0o600)
        return suspects

    def _open_keys(self) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        running: dict[str, None] = {}
        for line in text.splitlines():
            tag, _, key = line.partition(" ")
            if tag == "S":
                running[key] = None
            elif tag == "E":
                running.pop(key, None)
        return list(running)

    def _load_suspects(self) -> dict[str, Suspicion]:
        try:
            raw = json.loads(self.suspects_path.read_text())
            return {k: Suspicion(int(v["crashes"]), int(v["alone"])) for k, v in raw.items()}
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def _save_suspects(self, suspects: dict[str, Suspicion]) -> None:
        tmp = self.suspects_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: vars(v) for k, v in suspects.items()}))
        tmp.replace(self.suspects_path)

    def started(self, key: str) -> None:
        if self._fd is not None:
            os.write(self._fd, f"S {key}\n".encode())

    def ended(self, key: str) -> None:
        if self._fd is not None:
            os.write(self._fd, f"E {key}\n".encode())

    def forget(self, key: str, suspects: dict[str, Suspicion]) -> None:
        if suspects.pop(key, None) is not None:
            self._save_suspects(suspects)

    def close_clean(self) -> None:
        """A clean stop: whatever was left in flight is redelivered, not suspected."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


class Quarantine:
    """Decides how each job runs: normally, alone (a suspect), or not at all (poison)."""

    def __init__(self, recorder: FlightRecorder | None, threshold: int) -> None:
        self.recorder = recorder
        self.threshold = threshold
        self.suspects: dict[str, Suspicion] = recorder.open() if recorder and threshold else {}
        self._normal = 0
        self._isolated = False
        self._changed = asyncio.Condition()
        self._one_suspect = asyncio.Lock()

    def is_poison(self, key: str) -> bool:
        s = self.suspects.get(key)
        return s is not None and self.threshold > 0 and s.alone >= self.threshold

    def crashes(self, key: str) -> int:
        s = self.suspects.get(key)
        return s.crashes if s else 0

    @contextlib.asynccontextmanager
    async def running(self, key: str) -> AsyncIterator[None]:
        """Run one job under the flight recorder, isolated when it is a suspect."""
        if key in self.suspects:
            async with self._one_suspect:
                await asyncio.sleep(SETTLE_SECONDS)
                async with self._changed:
                    await self._changed.wait_for(lambda: self._normal == 0)
                    self._isolated = True
                try:
                    async with self._recorded(key):
                        yield
                finally:
                    async with self._changed:
                        self._isolated = False
                        self._changed.notify_all()
            return
        async with self._changed:
            await self._changed.wait_for(lambda: not self._isolated)
            self._normal += 1
        try:
            async with self._recorded(key):
                yield
        finally:
            async with self._changed:
                self._normal -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def _recorded(self, key: str) -> AsyncIterator[None]:
        if self.recorder is None:
            yield
            return
        self.recorder.started(key)
        try:
            yield
        finally:
            self.recorder.ended(key)
        self.settled(key)

    def settled(self, key: str) -> None:
        """The job is done for good (acked or dead-lettered): no longer a suspect."""
        if self.recorder is not None and key in self.suspects:
            self.recorder.forget(key, self.suspects)

    def close_clean(self) -> None:
        if self.recorder is not None:
            self.recorder.close_clean()
