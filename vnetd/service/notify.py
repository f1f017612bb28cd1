"""sd_notify through systemd-python; silent when not run by systemd.

Without NOTIFY_SOCKET (a terminal, a test, a container) every call is a no-op
and nothing is imported. The watchdog interval comes from WATCHDOG_USEC, and
only applies to this process when WATCHDOG_PID is unset or names it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger("vnetd.notify")


def watchdog_usec(environ: Mapping[str, str] | None = None) -> int | None:
    """The watchdog timeout systemd asked for, in microseconds, or None."""
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec if usec > 0 else None


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None,
                 send: Callable[[str], object] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._notify: Callable[[str], object] | None = send
        if self.enabled and self._notify is None:
            from systemd import daemon  # type: ignore[attr-defined]  # systemd-python
            self._notify = daemon.notify
        self.watchdog_usec = watchdog_usec(env) if self.enabled else None
        self.last_status: str | None = None
        self.ready_status: str | None = None
        self.is_stopping = False

    def send(self, **fields: str | int) -> None:
        if self._notify is None:
            return
        try:
            self._notify("\n".join(f"{k.upper()}={v}" for k, v in fields.items()))
        except OSError as exc:  # systemd went away: never take the daemon down for it
            log.warning("sd_notify_failed", error=str(exc))

    def ready(self, status: str) -> None:
        self.last_status = self.ready_status = status
        self.send(READY=1, STATUS=status)

    def status(self, status: str) -> None:
        if status != self.last_status:
            self.last_status = status
            self.send(STATUS=status)

    def watchdog(self) -> None:
        self.send(WATCHDOG=1)

    def stopping(self) -> None:
        self.last_status = "stopping"
        self.is_stopping = True
        self.send(STOPPING=1, STATUS="stopping: draining jobs in flight")
