"""Plays systemd's side of sd_notify: a unix datagram socket that records messages.

Start the daemon with ``NOTIFY_SOCKET=<listener.path>`` (and ``WATCHDOG_USEC``);
every datagram is kept as a Notification (arrival time + KEY=VALUE fields).
``on_ready`` runs inside the receive callback, before anything else happens on
the test's loop (used to freeze the daemon the moment it says READY=1).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Notification:
    at: float  # time.monotonic() on arrival
    fields: dict[str, str]


@dataclass
class NotifyListener:
    path: Path
    on_ready: Callable[[], None] | None = None
    messages: list[Notification] = field(default_factory=list)
    _sock: socket.socket | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> NotifyListener:
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.path))
        sock.setblocking(False)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._receive)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        self.path.unlink(missing_ok=True)

    def _receive(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                break
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(Notification(time.monotonic(), fields))
            if fields.get("READY") == "1" and self.on_ready is not None:
                self.on_ready()
        self._changed.set()

    def with_key(self, key: str, value: str | None = None) -> list[Notification]:
        return [m for m in self.messages
                if key in m.fields and (value is None or m.fields[key] == value)]

    def statuses(self) -> list[str]:
        return [m.fields["STATUS"] for m in self.messages if "STATUS" in m.fields]

    async def wait_for(self, key: str, value: str | None = None, *, count: int = 1,
                       timeout: float = 30.0) -> list[Notification]:
        deadline = time.monotonic() + timeout
        while len(found := self.with_key(key, value)) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{count}x {key}={value or '*'} not received in {timeout}s; "
                                   f"got {[m.fields for m in self.messages][-10:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return found


def short_socket_path(directory: Path, name: str) -> Path:
    """A socket path under the 108-byte sun_path limit (falls back to /tmp)."""
    path = directory / name
    if len(os.fsencode(path)) < 100:
        return path
    return Path("/tmp") / f"vnetd-{os.getpid()}-{name}"
