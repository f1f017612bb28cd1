"""A small named task tree: every long-lived background task has a name, an owner and a policy.

The daemon owns the root; each component gets a branch named after it
(`tree.branch("libvirt")`) and spawns its tasks there (`libvirt/events`). A task
that ends while nobody asked it to (an exception, or a return from a loop
meant to run forever) is logged with its exception, and then, by its policy:

- `CRITICAL`: the daemon cannot work without it (the watchdog probe, the job
  consumer's machinery). It is reported by `critical()`; the watchdog stops
  pinging, so systemd restarts the daemon.
- `DEGRADE`: the daemon works without it, less well (a watcher, the event
  publisher, a periodic sweep). It is reported by `failures()` (the daemon is
  `degraded`, host.health and the STATUS line say which task and why) and, with
  `restart=True`, started again after a backoff (0.5 s doubling to 30 s, back to
  the start once it has run for a minute); it is healthy again once restarted.

A task may also be `oneshot`: returning is its normal end (a resync that
reopens a socket); an exception still counts.

Cancellation is how owners stop their tasks (`branch.stop()`, or cancelling the
task): a cancelled task is never a failure. Lives outside the layers (like
vnetd.aio) so watchers and publishers can take a branch without importing the
service layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import structlog

log = structlog.get_logger("vnetd.supervisor")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
STABLE_SECONDS = 60.0
"""A restarted task that ran this long without failing starts its backoff afresh."""

Factory = Callable[[], Coroutine[Any, Any, None]]


class InjectedFailure(RuntimeError):
    """What `TaskTree.crash` makes a task end with (fault injection for tests)."""


class Policy(Enum):
    CRITICAL = "critical"
    DEGRADE = "degraded"


@dataclass
class Supervised:
    """One task of the tree, across its restarts."""

    name: str
    path: str
    factory: Factory
    policy: Policy
    restart: bool
    oneshot: bool
    task: asyncio.Task[None] | None = None
    state: str = "running"
    """running, restarting, failed, done (a oneshot that returned) or stopped."""
    reason: str | None = None
    """Why it ended, while it is failed or restarting."""
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = BACKOFF_MIN
    injected: BaseException | None = None
    _timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.state in ("running", "done", "stopped")


class TaskTree:
    """A branch of the tree (the root is a TaskTree too); see the module's docstring."""

    def __init__(self, name: str = "", *, parent: TaskTree | None = None,
                 backoff_min: float = BACKOFF_MIN, backoff_max: float = BACKOFF_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.parent = parent
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._clock = clock
        self._tasks: dict[str, Supervised] = {}
        self._branches: dict[str, TaskTree] = {}
        self._stopping = False
        self.listeners: list[Callable[[Supervised], None]] = []
        """Called whenever a task fails or recovers (the root's are called for every branch)."""

    # ------------------------------------------------------------ building
    def branch(self, name: str) -> TaskTree:
        """The branch `name` of this one (created once; a component's tasks live there)."""
        if name not in self._branches:
            self._branches[name] = TaskTree(
                self._path(name), parent=self, backoff_min=self.backoff_min,
                backoff_max=self.backoff_max, clock=self._clock)
        return self._branches[name]

    def adopt(self, branch: TaskTree) -> TaskTree:
        """Make a tree built on its own (a component's) a branch of this one."""
        if branch.name in self._branches and self._branches[branch.name] is not branch:
            raise ValueError(f"a branch {branch.name!r} exists already")
        branch.parent = self
        self._branches[branch.name] = branch
        return branch

    def _path(self, name: str) -> str:
        return f"{self.name}/{name}" if self.name else name

    def spawn(self, name: str, factory: Factory, *, policy: Policy = Policy.DEGRADE,
              restart: bool = False, oneshot: bool = False,
              replace: bool = False) -> asyncio.Task[None]:
        """Start `factory()` as the task `name` of this branch (replacing a finished one;
        with `replace`, cancelling a running one)."""
        old = self._tasks.get(name)
        if old is not None and old.task is not None and not old.task.done():
            if not replace:
                raise RuntimeError(f"task {old.path} is already running")
            old.task.cancel()
        if old is not None and old._timer is not None:
            old._timer.cancel()
        entry = Supervised(name, self._path(name), factory, policy, restart, oneshot,
                           backoff=self.backoff_min)
        self._tasks[name] = entry
        self._stopping = False
        return self._start(entry)

    def _start(self, entry: Supervised) -> asyncio.Task[None]:
        entry._timer = None
        entry.started_at = self._clock()
        entry.task = asyncio.create_task(entry.factory(), name=entry.path)
        entry.task.add_done_callback(functools.partial(self._ended, entry))
        return entry.task

    # ------------------------------------------------------------ endings
    def _ended(self, entry: Supervised, task: asyncio.Task[None]) -> None:
        if task is not entry.task:
            return  # an earlier run of a restarted task
        was_ok = entry.ok
        injected, entry.injected = entry.injected, None
        if injected is not None and not self._stopping:
            self._failed(entry, injected)
            return
        if task.cancelled() or self._stopping:
            entry.state = "stopped"
            entry.reason = None
            if not was_ok:
                self._notify(entry)
            return
        exc = task.exception()
        if exc is None and entry.oneshot:
            entry.state, entry.reason = "done", None
            if not was_ok:
                self._notify(entry)
            return
        self._failed(entry, exc)

    def _failed(self, entry: Supervised, exc: BaseException | None) -> None:
        entry.reason = (f"ended with {type(exc).__name__}: {exc}" if exc is not None
                        else "returned, though it should run until stopped")
        if exc is not None:
            log.error("task_failed", task=entry.path, policy=entry.policy.value,
                      restart=entry.restart, error=repr(exc), exc_info=exc)
        else:
            log.error("task_ended", task=entry.path, policy=entry.policy.value,
                      restart=entry.restart)
        if entry.restart and entry.policy is Policy.DEGRADE:
            if self._clock() - entry.started_at >= STABLE_SECONDS:
                entry.backoff = self.backoff_min
            delay = entry.backoff
            entry.backoff = min(entry.backoff * 2, self.backoff_max)
            entry.state = "restarting"
            entry.reason += f"; restart {entry.restarts + 1} in {delay:g}s"
            entry._timer = asyncio.get_running_loop().call_later(delay, self._restart, entry)
        else:
            entry.state = "failed"
        self._notify(entry)

    def _restart(self, entry: Supervised) -> None:
        if self._stopping or self._tasks.get(entry.name) is not entry:
            return
        entry.restarts += 1
        entry.state, entry.reason = "running", None
        log.warning("task_restarted", task=entry.path, restarts=entry.restarts)
        self._start(entry)
        self._notify(entry)

    def _notify(self, entry: Supervised) -> None:
        tree: TaskTree | None = self
        while tree is not None:
            for listener in tree.listeners:
                try:
                    listener(entry)
                except Exception:  # a listener must not break supervision
                    log.exception("task_listener_failed", task=entry.path)
            tree = tree.parent

    def crash(self, path: str) -> bool:
        """Make the running task `path` end as if it had raised (fault injection).

        It is cancelled, and its end is handled as an `InjectedFailure`: logged,
        reported and restarted (or fatal) like any real failure. False when no
        such task runs.
        """
        entry = self.get(path)
        if entry is None or entry.task is None or entry.task.done():
            return False
        entry.injected = InjectedFailure(f"failure injected into {path}")
        entry.task.cancel()
        return True

    # ------------------------------------------------------------ stopping
    async def stop(self) -> None:
        """Cancel every task of this branch and its branches, and wait for them."""
        self._stopping = True
        for branch in list(self._branches.values()):
            await branch.stop()
        tasks = []
        for entry in self._tasks.values():
            if entry._timer is not None:
                entry._timer.cancel()
                entry._timer = None
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()
                tasks.append(entry.task)
            entry.state, entry.reason = "stopped", None
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------ reading
    def entries(self) -> list[Supervised]:
        """Every task of this branch and its branches."""
        out = list(self._tasks.values())
        for branch in self._branches.values():
            out.extend(branch.entries())
        return out

    def get(self, path: str) -> Supervised | None:
        return next((e for e in self.entries() if e.path == path), None)

    def states(self) -> dict[str, str]:
        """Task path -> state, for every task."""
        return {e.path: e.state for e in self.entries()}

    def failures(self) -> dict[str, str]:
        """Task path -> why, for every task that ended unexpectedly and is not running."""
        return {e.path: e.reason or e.state for e in self.entries() if not e.ok}

    def critical(self) -> dict[str, str]:
        """The failures that mean the daemon must be restarted."""
        return {e.path: e.reason or e.state for e in self.entries()
                if not e.ok and e.policy is Policy.CRITICAL}

    def degraded(self) -> dict[str, str]:
        """The failures that make the daemon degraded but not dead."""
        return {e.path: e.reason or e.state for e in self.entries()
                if not e.ok and e.policy is Policy.DEGRADE}
