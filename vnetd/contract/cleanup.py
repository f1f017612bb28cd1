"""`cleanup.run`: one sweep of vnetd's own orphaned devices and networks, now.

The same sweep runs periodically inside the daemon (`[cleanup] interval_seconds`)
and from `vnetd cleanup` (the systemd timer). Its rules, grace periods and
leases are described in docs/contract.md (Cleanup).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from vnetd.contract.commands import Command, register_ops


class CleanupRun(Command):
    op: ClassVar[str] = "cleanup.run"
    dry_run: bool = Field(default=False,
                          description="report what would be removed, change nothing")


register_ops(CleanupRun)
