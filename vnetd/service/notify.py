"""sd_notify through systemd-python; silent when not run by systemd."""

from __future__ import annotations

import os


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notify = None
        if self.enabled:
            from systemd import daemon  # type: ignore[attr-defined]  # systemd-python
            self._notify = daemon.notify

    def send(self, **fields: str | int) -> None:
        if self._notify is not None:
            self._notify("\n".join(f"{k.upper()}={v}" for k, v in fields.items()))

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def stopping(self) -> None:
        self.send(STOPPING=1, STATUS="stopping")
