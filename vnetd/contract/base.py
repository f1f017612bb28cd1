"""What an op is: its args model (`Command`) and, beside it, its `OpSpec`.

The spec is the one place that says what the rest of the daemon needs to know
about an op: whether it changes anything (command events, leases and the
metrics refresh skip read-only ops), which of its fields name what it locks
and leases, and what its event subject is. The dispatcher, the leases, the
command events, the metrics and the docs all read it from here; nothing else
lists ops by name. `commands.build_op_table` refuses a model without its own
spec, or a spec naming a field the model lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

LINK = "link"
"""Lock space of kernel network devices (bridges, TAPs, any link by name)."""
NETWORK = "network"
"""Lock space of libvirt networks."""


def lock_key(space: str, name: str) -> str:
    """The per-name lock a job (or a cleanup sweep) takes: `link:tap0`, `network:nat1`."""
    return f"{space}:{name}"


def link_lock(name: str) -> str:
    return lock_key(LINK, name)


@dataclass(frozen=True, slots=True)
class OpSpec:
    """What an op does, beyond its args. Field names refer to the op's model."""

    summary: str
    """One line for the docs (docs/contract.md, Op table)."""
    read_only: bool = False
    """Changes nothing: no command event, no lease, no owned-device refresh."""
    exclusive: tuple[str, ...] = ()
    """Fields naming what the job changes: locked exclusively (a field left None is skipped)."""
    shared: tuple[str, ...] = ()
    """Fields naming what it uses without changing (a TAP's bridge): locked shared."""
    leases: tuple[str, ...] = ()
    """Fields naming devices it creates or uses: their leases keep them from cleanup.
    Each must also be locked, so a renewal is ordered against a sweep."""
    hold: str | None = None
    """Field with extra seconds the leases hold (`hold_seconds`)."""
    subject: str | None = None
    """Field whose value is the `subject` of the job's command event."""
    space: str = LINK
    """Lock space of the names in exclusive/shared."""
    event_result: tuple[str, ...] | None = None
    """Keys of the result a command.completed event carries (None: the whole result)."""

    def fields(self) -> set[str]:
        """Every model field the spec refers to."""
        named = {*self.exclusive, *self.shared, *self.leases}
        return named | {f for f in (self.hold, self.subject) if f is not None}

    def problems(self, model_fields: set[str]) -> list[str]:
        """Why this spec cannot describe a model with these fields (empty: it can)."""
        out = [f"names unknown field {f!r}" for f in sorted(self.fields() - model_fields)]
        unlocked = set(self.leases) - set(self.exclusive) - set(self.shared)
        if unlocked:
            out.append(f"leases {sorted(unlocked)} without locking them")
        if self.read_only and (self.leases or self.hold):
            out.append("a read-only op cannot lease")
        if self.space not in (LINK, NETWORK):
            out.append(f"unknown lock space {self.space!r}")
        if not self.summary:
            out.append("has no summary")
        return out


class Command(BaseModel):
    """Base of every command's args. Subclasses set `op`."""

    # Each op model sets its own `op_spec` too. (Not `spec`: network ops have an
    # arg of that name, and a ClassVar would silently hide the field.)

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    op: ClassVar[str]
    op_spec: ClassVar[OpSpec]

    def _names(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        values = (getattr(self, f) for f in fields)
        return tuple(v for v in values if isinstance(v, str))

    def lock_keys(self) -> tuple[str, ...]:
        """Names whose jobs must not run concurrently with this one."""
        return tuple(lock_key(self.op_spec.space, n) for n in self._names(self.op_spec.exclusive))

    def shared_lock_keys(self) -> tuple[str, ...]:
        """Names this job uses but does not change (a TAP's bridge): many jobs may share
        them, while a job that changes or deletes that device waits for all of them."""
        return tuple(lock_key(self.op_spec.space, n) for n in self._names(self.op_spec.shared))

    def leased(self) -> tuple[tuple[str, ...], float]:
        """(devices the job creates or uses, hold_seconds); ((), 0) for a job that leases none."""
        hold: Any = getattr(self, self.op_spec.hold) if self.op_spec.hold else None
        return self._names(self.op_spec.leases), float(hold or 0.0)

    def event_subject(self) -> str | None:
        """The `subject` of this job's command event."""
        value = getattr(self, self.op_spec.subject) if self.op_spec.subject else None
        return value if isinstance(value, str) else None
