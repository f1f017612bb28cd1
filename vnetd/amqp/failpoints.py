"""Fault injection for the crash tests (job points `after_effect`, `before_ack`).

The mechanism and every point are in the leaf module `vnetd/failpoints.py`, so
the netlink layer can use the same `VNETD_FAILPOINTS` for its device-creation
points; this name stays for the consumer.
"""

from __future__ import annotations

from vnetd.failpoints import POINTS, hit

__all__ = ["POINTS", "hit"]
