"""Fault injection for the crash tests: kill -9 the daemon at a chosen step.

Set `VNETD_FAILPOINTS=<point>[:<op>]` (comma-separated) before start. Points:
`after_effect` (the job's effect is done, no reply yet) and `before_ack` (the
reply is published, the message not yet acked). Unset in production: every
check is then one dictionary lookup that finds nothing.
"""

from __future__ import annotations

import os
import signal

POINTS = ("after_effect", "before_ack")


def _parse(spec: str) -> dict[str, str | None]:
    armed: dict[str, str | None] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        point, _, op = item.partition(":")
        if point not in POINTS:
            raise ValueError(f"unknown failpoint {point!r}; known: {', '.join(POINTS)}")
        armed[point] = op or None
    return armed


_ARMED = _parse(os.environ.get("VNETD_FAILPOINTS", ""))


def hit(point: str, op: str) -> None:
    if point in _ARMED and _ARMED[point] in (None, op):
        os.kill(os.getpid(), signal.SIGKILL)
