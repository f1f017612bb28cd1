"""Leases: jobs that create or use a device keep it from cleanup for a while.

A job that touches a device (an op whose spec lists `leases`: `tap.ensure`,
`port.attach`, `bridge.ensure`) renews the lease of every device it names; a
control plane may also pass `hold_seconds` to keep a device through a VM start
or a migration. The
dispatcher renews leases while it holds the job's per-name locks (exclusive on
the device, shared on a TAP's bridge); a cleanup sweep takes the device's lock
exclusively before it re-checks and deletes, so a sweep either sees the lease
or has already deleted the device before the job looks at it (the job then
fails or recreates it honestly; it never succeeds on a device about to vanish).

Leases live in memory only: after a restart the cleanup grace clocks restart
too (see handlers/cleanup.py), which keeps devices rather than removing them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from vnetd.contract.base import Command

Clock = Callable[[], float]


def boottime() -> float:
    """Seconds since boot, suspend included: one clock for every process on the host.

    Devices do not survive a reboot, so this clock is enough to date them, and
    unlike wall time it never jumps.
    """
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(slots=True)
class Lease:
    last_used: float
    hold_until: float


def leased_names(cmd: Command) -> tuple[tuple[str, ...], float]:
    """(devices the job creates or uses, hold_seconds) of a leasing job; ((), 0) otherwise.

    Read from the op's spec (`leases`, `hold`). Every name returned is one the
    job locks (the spec is refused otherwise), so renewing under those locks
    orders it against a sweep.
    """
    return cmd.leased()


class Leases:
    """When each device was last used by a job, and until when it is held."""

    def __init__(self, clock: Clock = boottime) -> None:
        self.clock = clock
        self._leases: dict[str, Lease] = {}

    def renew(self, name: str, hold_seconds: float = 0.0) -> None:
        now = self.clock()
        lease = self._leases.get(name)
        if lease is None:
            self._leases[name] = Lease(now, now + hold_seconds)
        else:
            lease.last_used = now
            lease.hold_until = max(lease.hold_until, now + hold_seconds)

    def get(self, name: str) -> Lease | None:
        return self._leases.get(name)

    def held_for(self, name: str, lease_seconds: float) -> float:
        """Seconds the device is still leased (0 when free)."""
        lease = self._leases.get(name)
        if lease is None:
            return 0.0
        until = max(lease.last_used + lease_seconds, lease.hold_until)
        return max(0.0, until - self.clock())

    def prune(self, lease_seconds: float) -> None:
        """Forget leases that expired (called by the sweep, so memory stays bounded)."""
        now = self.clock()
        for name in [n for n, lease in self._leases.items()
                     if max(lease.last_used + lease_seconds, lease.hold_until) <= now]:
            del self._leases[name]

    def forget(self, name: str) -> None:
        self._leases.pop(name, None)

    def __len__(self) -> int:
        return len(self._leases)
