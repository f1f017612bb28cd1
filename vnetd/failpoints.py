"""Fault injection for the crash tests: kill -9 the daemon at a chosen step.

Set `VNETD_FAILPOINTS=<point>[:<what>]` (comma-separated) before start; `what`
narrows a point to one op (job points) or one device kind (creation points).

Job points (vnetd/amqp/consumer.py), narrowed by op:
- `after_effect`: the job's effect is done, no reply yet;
- `before_ack`: the reply is published, the message not yet acked.

Device creation points (vnetd/net/netlink.py), narrowed by kind (`tap`, `bridge`):
- `after_create`: the device exists, not yet marked as vnetd's;
- `after_mark`: marked, creation not yet finished (a TAP not yet persistent,
  a netlink-created device still in the creation group).

Unset in production: every check is then one test of an empty dictionary.
A leaf module (standard library only), so every layer may call it.
"""

from __future__ import annotations

import os
import signal

POINTS = ("after_effect", "before_ack", "after_create", "after_mark")


def _parse(spec: str) -> dict[str, str | None]:
    armed: dict[str, str | None] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        point, _, what = item.partition(":")
        if point not in POINTS:
            raise ValueError(f"unknown failpoint {point!r}; known: {', '.join(POINTS)}")
        armed[point] = what or None
    return armed


_ARMED = _parse(os.environ.get("VNETD_FAILPOINTS", ""))


def hit(point: str, what: str) -> None:
    if _ARMED and point in _ARMED and _ARMED[point] in (None, what):
        os.kill(os.getpid(), signal.SIGKILL)
