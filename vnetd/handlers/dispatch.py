"""Runs a validated command: takes its locks, calls its handler, runs batches.

The dispatcher turns every failure into a contract error: handlers raise
VnetdError subclasses; anything else is a bug and becomes `internal`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import structlog

from vnetd.contract.base import Command
from vnetd.contract.commands import Batch, TapEnsure
from vnetd.contract.errors import Internal, Unsupported, VnetdError
from vnetd.handlers import tap, tap_batch
from vnetd.handlers.context import Context
from vnetd.handlers.leases import Leases, leased_names
from vnetd.handlers.registry import Registry
from vnetd.handlers.tap_batch import Outcome

log = structlog.get_logger(__name__)


class _SharedLock:
    """Many shared holders or one exclusive holder; exclusive waiters block new sharers.

    Taken and given back without the Condition while nobody waits (nearly always: one
    job per TAP name), which is most of what a job's locks cost otherwise; with a
    waiter, every acquire and release goes through the Condition as it always did.
    """

    __slots__ = ("_cond", "_exclusive", "_shared", "_waiting", "_waiting_exclusive", "users")

    def __init__(self) -> None:
        self._cond: asyncio.Condition | None = None
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0
        self._waiting = 0
        """Acquirers on the slow path: while any, releases notify them."""
        self.users = 0

    async def acquire(self, exclusive: bool) -> None:
        if not self._waiting and not self._exclusive and (
                not self._shared if exclusive else True):
            if exclusive:
                self._exclusive = True
            else:
                self._shared += 1
            return
        cond = self._cond
        if cond is None:
            cond = self._cond = asyncio.Condition()
        self._waiting += 1
        try:
            async with cond:
                if exclusive:
                    self._waiting_exclusive += 1
                    try:
                        await cond.wait_for(lambda: not self._exclusive and not self._shared)
                    finally:
                        self._waiting_exclusive -= 1
                    self._exclusive = True
                else:
                    await cond.wait_for(
                        lambda: not self._exclusive and not self._waiting_exclusive)
                    self._shared += 1
        finally:
            self._waiting -= 1

    async def release(self, exclusive: bool) -> None:
        if exclusive:
            self._exclusive = False
        else:
            self._shared -= 1
        if self._waiting and self._cond is not None:
            async with self._cond:
                self._cond.notify_all()


class KeyedLocks:
    """A shared/exclusive lock per key, created on demand and dropped when unused."""

    def __init__(self) -> None:
        self._locks: dict[str, _SharedLock] = {}

    @asynccontextmanager
    async def hold(self, keys: Iterable[str], shared: Iterable[str] = ()) -> AsyncIterator[None]:
        """Hold `keys` exclusively and `shared` shared (a key in both is exclusive)."""
        wanted = {key: True for key in keys}
        for key in shared:
            wanted.setdefault(key, False)
        held: list[tuple[str, _SharedLock, bool]] = []
        try:
            for key in sorted(wanted):  # a fixed order: no deadlock between jobs
                exclusive = wanted[key]
                lock = self._locks.get(key)
                if lock is None:
                    lock = self._locks[key] = _SharedLock()
                lock.users += 1
                try:
                    await lock.acquire(exclusive)
                except BaseException:
                    self._unuse(key, lock)
                    raise
                held.append((key, lock, exclusive))
            yield
        finally:
            for key, lock, exclusive in reversed(held):  # the reverse order, as taken
                try:
                    await lock.release(exclusive)
                finally:
                    self._unuse(key, lock)

    def _unuse(self, key: str, lock: _SharedLock) -> None:
        lock.users -= 1
        if lock.users == 0:
            del self._locks[key]


class Dispatcher:
    def __init__(self, registry: Registry, ctx: Context) -> None:
        self.registry = registry
        self.ctx = ctx
        self.locks = KeyedLocks()
        self.leases = Leases()
        # The grouped path does what tap.ensure does; a registry serving tap.ensure
        # with another handler (a test's) runs its batches command by command.
        self._tap_runs = registry.get(TapEnsure) is tap.ensure

    async def execute(self, cmd: Command) -> dict[str, Any]:
        """The result of `cmd`, or a VnetdError describing why it failed."""
        if isinstance(cmd, Batch):
            if batch_pipelined(cmd) and not (
                    self._tap_runs and all(isinstance(c, TapEnsure) for c in cmd.commands)):
                return await self._pipeline(cmd)
            return await self._batch(cmd)
        async with self.locks.hold(cmd.lock_keys(), cmd.shared_lock_keys()):
            return await self._run_locked(cmd)

    async def _run_locked(self, cmd: Command) -> dict[str, Any]:
        """Run one command whose locks are held."""
        handler = self.registry.get(type(cmd))
        if handler is None:
            raise Unsupported(f"op {cmd.op} is not served by this daemon", op=cmd.op)
        try:
            leased, hold = leased_names(cmd)
            # Renewed under the job's locks, which a cleanup sweep takes exclusively
            # before it deletes: it sees the lease, or deleted before the job looked.
            for name in leased:
                self.leases.renew(name, hold)
            result = await handler(cmd, self.ctx)
            for name in leased:  # the lease runs from the job's success
                self.leases.renew(name, hold)
            return result
        except VnetdError:
            raise
        except Exception as exc:
            log.exception("handler_failed", op=cmd.op)
            raise Internal(f"{cmd.op} failed unexpectedly: {type(exc).__name__}: {exc}",
                           op=cmd.op) from exc

    async def _batch(self, batch: Batch) -> dict[str, Any]:
        """One command after the other (with stop_on_error, none starts after a failure);
        runs of tap.ensure go together (handlers.tap_batch), in their place."""
        results: list[dict[str, Any]] = []
        failed = 0
        commands = batch.commands
        i = 0
        stop = False
        while i < len(commands) and not stop:
            if i:
                # A command may finish without waiting for anything (netlink answers are
                # read right after the send): give the loop its turn between commands,
                # or the event watcher overruns and the broker's heartbeats stall.
                await asyncio.sleep(0)
            group = _tap_run(commands, i) if self._tap_runs else []
            outcomes: list[Outcome]
            if len(group) > 1:
                outcomes = await self._tap_group(group, batch.stop_on_error)
            else:
                try:
                    outcomes = [await self.execute(commands[i])]
                except VnetdError as exc:
                    outcomes = [exc]
            for outcome in outcomes:
                if outcome is None:  # not run: an earlier one failed (stop_on_error)
                    stop = True
                    break
                i += 1
                if isinstance(outcome, VnetdError):
                    failed += 1
                    results.append({"ok": False, "error": outcome.to_dict()})
                    if batch.stop_on_error:
                        stop = True
                        break
                else:
                    results.append({"ok": True, "result": outcome})
        return {"results": results, "failed": failed, "skipped": len(commands) - len(results),
                "completed": len(results) - failed}

    async def _tap_group(self, group: list[TapEnsure], stop_on_error: bool) -> list[Outcome]:
        """Commands of `_tap_run`, under all their locks at once (held in one sorted
        order, as one command's are)."""
        keys = [key for cmd in group for key in cmd.lock_keys()]
        shared = [key for cmd in group for key in cmd.shared_lock_keys()]
        async with self.locks.hold(keys, shared):
            for cmd in group:
                leased, hold = leased_names(cmd)
                for name in leased:
                    self.leases.renew(name, hold)
            try:
                outcomes = await tap_batch.ensure_many(group, self.ctx, stop_on_error,
                                                       self._run_locked)
            except VnetdError as exc:  # the shared read failed: the first one fails
                outcomes = [exc] + [None] * (len(group) - 1)
            except Exception as exc:
                log.exception("handler_failed", op=TapEnsure.op)
                outcomes = [Internal(f"{TapEnsure.op} failed unexpectedly: "
                                     f"{type(exc).__name__}: {exc}", op=TapEnsure.op)]
                outcomes += [None] * (len(group) - 1)
            for cmd, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, dict):
                    leased, hold = leased_names(cmd)
                    for name in leased:  # the lease runs from the job's success
                        self.leases.renew(name, hold)
        return outcomes

    async def _pipeline(self, batch: Batch) -> dict[str, Any]:
        """Without stop_on_error: up to PIPELINE commands run at once.

        Each command takes its locks in batch order before the next one may, so
        commands on the same device (or a bridge and the TAPs joining it) still run
        in the order given; independent ones overlap their kernel round trips.
        """
        results: list[dict[str, Any]] = [{} for _ in batch.commands]
        room = asyncio.Semaphore(PIPELINE)

        async def run(i: int, cmd: Command, held: AsyncExitStack) -> None:
            try:
                async with held:
                    results[i] = {"ok": True, "result": await self._run_locked(cmd)}
            except VnetdError as exc:
                results[i] = {"ok": False, "error": exc.to_dict()}
            finally:
                room.release()

        tasks: list[asyncio.Task[None]] = []
        try:
            for i, cmd in enumerate(batch.commands):
                await room.acquire()
                held = AsyncExitStack()
                await held.enter_async_context(
                    self.locks.hold(cmd.lock_keys(), cmd.shared_lock_keys()))
                tasks.append(asyncio.create_task(run(i, cmd, held)))
        finally:
            await asyncio.gather(*tasks)
        failed = sum(1 for r in results if not r["ok"])
        return {"results": results, "failed": failed, "skipped": 0,
                "completed": len(results) - failed}


PIPELINE = 64
"""Commands of one batch in flight at once (stop_on_error: false)."""
TAP_RUN = 32
"""tap.ensure commands of a batch read and created together (handlers.tap_batch): the
loop runs other work (the event watcher) between runs, so a run is kept short (about
15 ms of kernel work here)."""


def _tap_run(commands: tuple[Command, ...], start: int) -> list[TapEnsure]:
    """The tap.ensure commands from `start` on that can go together: each on a TAP of
    its own that no other of them names (as its TAP or its bridge)."""
    run: list[TapEnsure] = []
    names: set[str] = set()
    for cmd in commands[start:start + TAP_RUN]:
        if not isinstance(cmd, TapEnsure) or cmd.name in names or cmd.bridge in names:
            break
        if any(cmd.name == other.bridge for other in run):
            break
        names.add(cmd.name)
        run.append(cmd)
    return run


def batch_pipelined(batch: Batch) -> bool:
    return not batch.stop_on_error and len(batch.commands) > 1
