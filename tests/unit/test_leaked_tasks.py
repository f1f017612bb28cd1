"""The unit tier's guard against leaked tasks (tests/unit/conftest.py) does catch them."""

from __future__ import annotations

import asyncio

from tests.unit.conftest import stop_leaked_tasks


async def test_a_task_left_running_is_named_and_cancelled() -> None:
    task = asyncio.create_task(asyncio.Event().wait(), name="forgotten-watcher")
    leaked = await stop_leaked_tasks()
    assert len(leaked) == 1 and leaked[0].startswith("forgotten-watcher (")
    assert task.cancelled()


async def test_a_task_that_is_finishing_is_not_a_leak() -> None:
    async def short() -> None:
        await asyncio.sleep(0)

    task = asyncio.create_task(short())
    assert await stop_leaked_tasks() == []
    assert task.done() and not task.cancelled()
