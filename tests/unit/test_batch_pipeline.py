"""batch with stop_on_error false: commands overlap, yet keep their order per device."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.unit.fakes import FakeNet
from vnetd.contract.commands import BridgeEnsure, Command, TapDelete, TapEnsure, parse_request
from vnetd.handlers.context import Context
from vnetd.handlers.dispatch import Dispatcher
from vnetd.handlers.policy import Policy


def _dispatcher(log: list[str], running: list[int], peak: list[int]) -> Dispatcher:
    async def handler(cmd: Any, ctx: Context) -> dict[str, Any]:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        log.append(f"start {cmd.op} {cmd.name}")
        await asyncio.sleep(0.01)
        log.append(f"end {cmd.op} {cmd.name}")
        running[0] -= 1
        if cmd.name == "bad":
            from vnetd.contract.errors import Forbidden
            raise Forbidden("no")
        return {"name": cmd.name}

    registry: dict[type[Command], Any] = {BridgeEnsure: handler, TapEnsure: handler,
                                          TapDelete: handler}
    ctx = Context(host_id="h", net=FakeNet(), policy=Policy(), version="t")
    return Dispatcher(registry, ctx)


def _batch(cmds: list[tuple[str, dict[str, Any]]], stop_on_error: bool) -> Command:
    return parse_request({"op": "batch", "args": {
        "commands": [{"op": op, "args": a} for op, a in cmds], "stop_on_error": stop_on_error}})


async def test_independent_commands_overlap_and_results_keep_batch_order() -> None:
    log: list[str] = []
    running, peak = [0], [0]
    d = _dispatcher(log, running, peak)
    cmds = [("tap.ensure", {"name": f"t{i}"}) for i in range(20)]
    res = await d.execute(_batch(cmds, stop_on_error=False))
    assert peak[0] > 1
    assert [r["result"]["name"] for r in res["results"]] == [f"t{i}" for i in range(20)]
    assert (res["completed"], res["failed"], res["skipped"]) == (20, 0, 0)


async def test_commands_on_one_device_or_its_bridge_stay_in_order() -> None:
    log: list[str] = []
    running, peak = [0], [0]
    d = _dispatcher(log, running, peak)
    cmds = [("bridge.ensure", {"name": "br0"}),
            ("tap.ensure", {"name": "t0", "bridge": "br0"}),
            ("tap.ensure", {"name": "t1", "bridge": "br0"}),
            ("tap.delete", {"name": "t0"}),
            ("tap.ensure", {"name": "bad"})]
    res = await d.execute(_batch(cmds, stop_on_error=False))
    pos = {entry: i for i, entry in enumerate(log)}
    assert pos["end bridge.ensure br0"] < pos["start tap.ensure t0"]  # the bridge first
    assert pos["end bridge.ensure br0"] < pos["start tap.ensure t1"]
    assert pos["end tap.ensure t0"] < pos["start tap.delete t0"]  # same device: in order
    assert pos["start tap.ensure t1"] < pos["end tap.ensure t0"]  # but the TAPs overlap
    assert (res["completed"], res["failed"]) == (4, 1)
    assert res["results"][4]["error"]["code"] == "forbidden"


async def test_stop_on_error_stays_one_at_a_time() -> None:
    log: list[str] = []
    running, peak = [0], [0]
    d = _dispatcher(log, running, peak)
    cmds = [("tap.ensure", {"name": "bad"})] + [("tap.ensure", {"name": f"t{i}"}) for i in range(5)]
    res = await d.execute(_batch(cmds, stop_on_error=True))
    assert peak[0] == 1
    assert (res["completed"], res["failed"], res["skipped"]) == (0, 1, 5)
    assert log == ["start tap.ensure bad", "end tap.ensure bad"]
