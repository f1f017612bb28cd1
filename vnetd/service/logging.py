"""structlog set-up: JSON lines on stdout, or journald fields under systemd."""

from __future__ import annotations

import logging
import os
import sys

import structlog

from vnetd.config.settings import LogSettings


def setup_logging(settings: LogSettings) -> None:
    level = getattr(logging, settings.level.upper())
    fmt = settings.format
    if fmt == "auto":
        fmt = "journal" if os.environ.get("JOURNAL_STREAM") else (
            "console" if sys.stderr.isatty() else "json")
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
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr)
