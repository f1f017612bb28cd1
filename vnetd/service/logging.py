"""structlog set-up: JSON lines on stdout, or journald fields under systemd.

`format = "auto"` picks journald when stdout or stderr really is the journal
stream systemd gave us (JOURNAL_STREAM names its device:inode), a console
renderer on a terminal, and JSON lines otherwise. Records of libraries that use
the standard `logging` module (aio-pika, pyroute2) go through the same renderer.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

import structlog

from vnetd.config.settings import LogSettings


def connected_to_journal(environ: Mapping[str, str] | None = None) -> bool:
    """True when stdout or stderr is the journal stream (systemd.exec(5): JOURNAL_STREAM)."""
    stream = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    if not stream:
        return False
    for fd in (1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stream == f"{st.st_dev}:{st.st_ino}":
            return True
    return False


def effective_format(settings: LogSettings) -> str:
    if settings.format != "auto":
        return settings.format
    if connected_to_journal():
        return "journal"
    return "console" if sys.stdout.isatty() else "json"


class _ToStructlog(logging.Handler):
    """Forwards standard-library records into structlog (one renderer for everything)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = structlog.get_logger(record.name)
            logger.log(record.levelno, record.getMessage(), logger=record.name,
                       exc_info=record.exc_info or None)
        except Exception:  # noqa: BLE001 - the logging.Handler contract: report, never raise
            self.handleError(record)


def setup_logging(settings: LogSettings) -> str:
    """Configure structlog and the stdlib root logger; returns the format in use."""
    level = getattr(logging, settings.level.upper())
    fmt = effective_format(settings)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if fmt == "journal":
        from vnetd.service.journal import JournalRenderer
        renderer: structlog.typing.Processor = JournalRenderer()
    elif fmt == "console":
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),  # one write() a line
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers[:] = [_ToStructlog()]
    # Libraries are chatty at info; their warnings and errors are what matter.
    root.setLevel(max(level, logging.WARNING))
    return fmt
