"""Test-only fault injection for the service layer: block the event loop on SIGUSR1.

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
