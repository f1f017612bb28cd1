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

from vnetd.contract.commands import Batch, Command
from vnetd.contract.errors import Internal, Unsupported, VnetdError
from vnetd.handlers.context import Context
from vnetd.handlers.registry import Registry

log = structlog.get_logger(__name__)


class KeyedLocks:
    """One asyncio.Lock per key, created on demand and dropped when unused."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for key in sorted(set(keys)):  # a fixed order: no deadlock between jobs
                await stack.enter_async_context(self._one(key))
            yield

    @asynccontextmanager
    async def _one(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Dispatcher:
    def __init__(self, registry: Registry, ctx: Context) -> None:
        self.registry = registry
        self.ctx = ctx
        self.locks = KeyedLocks()

    async def execute(self, cmd: Command) -> dict[str, Any]:
        """The result of `cmd`, or a VnetdError describing why it failed."""
        if isinstance(cmd, Batch):
            return await self._batch(cmd)
        handler = self.registry.get(type(cmd))
        if handler is None:
            raise Unsupported(f"op {cmd.op} is not served by this daemon", op=cmd.op)
        try:
            async with self.locks.hold(cmd.lock_keys()):
                return await handler(cmd, self.ctx)
        except VnetdError:
            raise
        except Exception as exc:
            log.exception("handler_failed", op=cmd.op)
            raise Internal(f"{cmd.op} failed unexpectedly: {type(exc).__name__}: {exc}",
                           op=cmd.op) from exc

    async def _batch(self, batch: Batch) -> dict[str, Any]:
        results: list[dict[str, Any]] = []
        failed = 0
        for i, cmd in enumerate(batch.commands):
            try:
                results.append({"ok": True, "result": await self.execute(cmd)})
            except VnetdError as exc:
                failed += 1
                results.append({"ok": False, "error": exc.to_dict()})
                if batch.stop_on_error:
                    skipped = len(batch.commands) - i - 1
                    return {"results": results, "failed": failed, "skipped": skipped,
                            "completed": i + 1 - failed}
        return {"results": results, "failed": failed, "skipped": 0,
                "completed": len(results) - failed}
