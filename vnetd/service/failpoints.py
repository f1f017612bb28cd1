"""Test-only fault injection for the service layer: block the event loop on SIGUSR1,
make named background tasks fail on SIGUSR2.

Set `VNETD_FAILPOINT_BLOCK_LOOP=<seconds>` before start; then each SIGUSR1 makes
the event loop sleep that long (a stand-in for a hung handler), which must stop
the watchdog pings. Unset in production: nothing is installed and SIGUSR1 keeps
its default meaning.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("vnetd.failpoints")
ENV = "VNETD_FAILPOINT_BLOCK_LOOP"


def block_loop_seconds() -> float | None:
    raw = os.environ.get(ENV, "")
    if not raw:
        return None
    seconds = float(raw)
    if not 0 < seconds <= 600:
        raise ValueError(f"{ENV} must be in (0, 600] seconds, got {raw!r}")
    return seconds


def install(loop: asyncio.AbstractEventLoop) -> bool:
    """Arm the SIGUSR1 loop blocker when the env var asks for it; True when armed."""
    seconds = block_loop_seconds()
    if seconds is None:
        return False

    def block() -> None:
        log.warning("failpoint_block_loop", seconds=seconds)
        time.sleep(seconds)  # deliberately on the loop: that is the fault

    loop.add_signal_handler(signal.SIGUSR1, block)
    return True


def uninstall(loop: asyncio.AbstractEventLoop) -> None:
    if block_loop_seconds() is not None:
        loop.remove_signal_handler(signal.SIGUSR1)


CRASH_TASK_ENV = "VNETD_FAILPOINT_CRASH_TASK"
"""`<task path>[,<task path>...]`: each SIGUSR2 makes those tasks of the task tree fail."""


def install_task_crash(loop: asyncio.AbstractEventLoop, crash: Callable[[str], bool]) -> bool:
    """Arm SIGUSR2 to inject a failure into the named tasks; True when armed."""
    paths = [p.strip() for p in os.environ.get(CRASH_TASK_ENV, "").split(",") if p.strip()]
    if not paths:
        return False

    def inject() -> None:
        for path in paths:
            log.warning("failpoint_crash_task", task=path, running=crash(path))

    loop.add_signal_handler(signal.SIGUSR2, inject)
    return True
