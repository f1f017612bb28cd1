"""`cleanup.run`: one sweep of vnetd's own orphaned devices and networks, now.

The same sweep runs periodically inside the daemon (`[cleanup] interval_seconds`)
and from `vnetd cleanup` (the systemd timer). Its rules, grace periods and
leases are described in docs/contract.md (Cleanup).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from vnetd.contract.base import Command, OpSpec


class CleanupRun(Command):
    op: ClassVar[str] = "cleanup.run"
    # No locks of its own: the sweep takes each device's lock as it removes it.
    op_spec: ClassVar[OpSpec] = OpSpec("one sweep of vnetd's orphaned devices and networks, now")
    dry_run: bool = Field(default=False,
                          description="report what would be removed, change nothing")


CLEANUP_OPS: tuple[type[Command], ...] = (CleanupRun,)
"""This module's ops, for the op table (commands.build_op_table)."""
