"""Crash quarantine: find the job that kills the daemon, and keep it from taking others down.

The broker's delivery limit alone is a blunt backstop: when the daemon dies, every
job in flight is returned and counted, so a poison message drags innocent jobs to
the dead-letter queue with it. vnetd does better with a flight recorder:

- Before a job runs, a line `S <key>` is appended to `<state_dir>/inflight.log`,
  and `E <key>` once it is settled. A plain write survives kill -9 (the page
  cache belongs to the kernel); a clean shutdown truncates the file.
- The log is bounded: once it is over `max_bytes`, it is rewritten with only
  the `S` lines of the jobs in flight (written to a new file that atomically
  replaces the old one, so a kill during the rewrite leaves one whole log or
  the other). It is read line by line at start, never held whole.
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
MAX_LOG_BYTES = 64 * 1024
"""The flight log is compacted past this size (a job's two lines take at most ~410 bytes)."""
MAX_SUSPECTS = 1000
"""Suspects kept at most (oldest forgotten first): a job never seen again is not kept forever."""


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

    def __init__(self, state_dir: Path, max_bytes: int = MAX_LOG_BYTES) -> None:
        self.dir = state_dir
        self.log_path = state_dir / "inflight.log"
        self.suspects_path = state_dir / "suspects.json"
        self.max_bytes = max_bytes
        self._limit = max_bytes
        self.compactions = 0
        self._fd: int | None = None
        self._size = 0
        self._open: dict[str, int] = {}
        """Keys in flight -> how many deliveries of that key are (duplicates share a key)."""

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
        self._fd = self._new_log(self.log_path)
        self._size = 0
        return suspects

    @staticmethod
    def _new_log(path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                       0o600)

    def _open_keys(self) -> list[str]:
        running: dict[str, int] = {}  # two deliveries of one job share its key: counted
        try:
            with self.log_path.open(errors="replace") as log_file:
                for line in log_file:  # streamed: memory bounded by the keys in flight
                    tag, _, key = line.rstrip("\n").partition(" ")
                    if tag == "S":
                        running[key] = running.get(key, 0) + 1
                    elif tag == "E" and (left := running.get(key, 0) - 1) > 0:
                        running[key] = left
                    elif tag == "E":
                        running.pop(key, None)
        except FileNotFoundError:
            return []
        return list(running)

    def _load_suspects(self) -> dict[str, Suspicion]:
        try:
            raw = json.loads(self.suspects_path.read_text())
            return {k: Suspicion(int(v["crashes"]), int(v["alone"])) for k, v in raw.items()}
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def _save_suspects(self, suspects: dict[str, Suspicion]) -> None:
        for key in list(suspects)[:max(0, len(suspects) - MAX_SUSPECTS)]:
            del suspects[key]
        tmp = self.suspects_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: vars(v) for k, v in suspects.items()}))
        tmp.replace(self.suspects_path)

    def started(self, key: str) -> None:
        if self._fd is not None:
            self._open[key] = self._open.get(key, 0) + 1
            self._write(f"S {key}\n".encode())

    def ended(self, key: str) -> None:
        if self._fd is not None:
            left = self._open.get(key, 0) - 1
            if left > 0:
                self._open[key] = left
            else:
                self._open.pop(key, None)
            self._write(f"E {key}\n".encode())
            if self._size > self._limit:
                self._compact()

    @property
    def size(self) -> int:
        """Bytes in the flight log now."""
        return self._size

    def _write(self, line: bytes) -> None:
        if self._fd is not None:
            self._size += os.write(self._fd, line)

    def _compact(self) -> None:
        """Replace the log by one with only the jobs in flight (S lines), atomically."""
        if self._fd is None:
            return
        tmp = self.log_path.with_suffix(".new")
        fd = self._new_log(tmp)
        size = 0
        try:
            body = "".join(f"S {key}\n" * n for key, n in self._open.items()).encode()
            if body:
                size = os.write(fd, body)
            os.replace(tmp, self.log_path)
        except OSError as exc:  # keep appending to the old log: bigger, still right
            os.close(fd)
            log.warning("flight_log_compaction_failed", error=str(exc))
            return
        os.close(self._fd)
        self._fd, self._size = fd, size
        self.compactions += 1
        # With very many jobs in flight, compacting again at the next line would
        # rewrite the log at every job: wait until it has at least doubled.
        self._limit = max(self.max_bytes, 2 * size)

    def forget(self, key: str, suspects: dict[str, Suspicion]) -> None:
        if suspects.pop(key, None) is not None:
            self._save_suspects(suspects)

    def close_clean(self) -> None:
        """A clean stop: whatever was left in flight is redelivered, not suspected."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
            self._size = 0
            self._open.clear()


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
