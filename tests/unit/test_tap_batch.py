"""tap.ensure runs of a batch (handlers.tap_batch through the dispatcher), on FakeNet:
one read and one creation for the run, the results one-by-one would give."""

from __future__ import annotations

from typing import Any

from tests.unit.fakes import Caller, FakeNet
from vnetd.contract.commands import parse_request
from vnetd.contract.errors import Conflict
from vnetd.handlers.context import Context
from vnetd.handlers.dispatch import Dispatcher
from vnetd.handlers.policy import Policy
from vnetd.handlers.registry import build_registry
from vnetd.net.model import Link, LinkChange, TapSpec


def sub(op: str, **args: Any) -> dict[str, Any]:
    return {"op": op, "args": args}


async def run(net: FakeNet, cmd: dict[str, Any]) -> dict[str, Any]:
    d = Dispatcher(build_registry(), Context(host_id="h", net=net, policy=Policy(),
                                             version="t"))
    return await d.execute(parse_request(cmd))


class RefusingNet(FakeNet):
    """TUNSETIFF answers EBUSY for b1: its name was taken between the read and the
    creation."""

    async def _add_tap(self, spec: TapSpec, change: LinkChange) -> Link:
        if spec.name == "b1":
            raise Conflict("create tap b1: Device or resource busy", errno=16)
        return await super()._add_tap(spec, change)


async def test_a_run_is_read_once_and_created_once(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0", mtu=1450)
    await call("bridge.ensure", name="br1")
    net.forget_calls()
    cmds = [sub("tap.ensure", name=f"t{i}", bridge="br0" if i % 2 else "br1", owner_uid=107)
            for i in range(6)] + [sub("tap.ensure", name="lone", mac="52:54:00:00:aa:01")]
    res = await call("batch", commands=cmds)
    assert (res["completed"], res["failed"], res["skipped"]) == (7, 0, 0)
    assert [c.method for c in net.calls] == ["get_links", "add_taps"]
    assert net.calls[0].args == (*(f"t{i}" for i in range(6)), "lone", "br0", "br1")
    for i, r in enumerate(res["results"][:6]):
        link = net.by_name(f"t{i}")
        bridge = "br0" if i % 2 else "br1"
        assert link.master == net.index_of(bridge) and link.up and link.alias == "vnetd:v1"
        assert link.mtu == (1450 if i % 2 else 1500)
        assert r["result"]["master"] == bridge and r["result"]["created"] is True
        assert r["result"]["tap"]["owner_uid"] == 107 and r["result"]["mtu"] == link.mtu
    assert net.by_name("lone").mac == "52:54:00:00:aa:01"
    assert net.ipv6_disabled == {f"t{i}" for i in range(6)} | {"lone"}


async def test_same_results_as_one_by_one() -> None:
    cmds = [sub("bridge.ensure", name="br0")] + [sub("tap.ensure", name=f"t{i}", bridge="br0")
                                                 for i in range(4)]
    grouped = await run(FakeNet(), sub("batch", commands=cmds))
    singles = FakeNet()
    alone = [await run(singles, c) for c in cmds]
    assert [r["result"] for r in grouped["results"]] == alone


async def test_stop_on_error_keeps_what_came_before_only(net: FakeNet, call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    net.add("virbr0", "bridge")
    cmds = [sub("tap.ensure", name="a0", bridge="br0"),
            sub("tap.ensure", name="a1", bridge="br0"),
            sub("tap.ensure", name="a2", bridge="virbr0"),  # forbidden: not ours
            sub("tap.ensure", name="a3", bridge="br0")]
    res = await call("batch", commands=cmds)
    assert (res["completed"], res["failed"], res["skipped"]) == (2, 1, 1)
    assert res["results"][2]["error"]["code"] == "forbidden"
    assert {"a0", "a1"} <= net.names() and not {"a2", "a3"} & net.names()

    res = await call("batch", commands=[*cmds[:2], sub("tap.ensure", name="a4", bridge="nosuch"),
                                        cmds[3]], stop_on_error=False)
    assert (res["completed"], res["failed"], res["skipped"]) == (3, 1, 0)
    assert res["results"][2]["error"]["code"] == "not_found"
    assert "a3" in net.names() and "a4" not in net.names()
    assert res["results"][0]["result"]["created"] is False  # existing: one by one


async def test_a_failed_creation_stops_the_rest() -> None:
    net = RefusingNet()
    await run(net, sub("bridge.ensure", name="br0"))
    res = await run(net, sub("batch", commands=[sub("tap.ensure", name=f"b{i}", bridge="br0")
                                                for i in range(3)]))
    assert (res["completed"], res["failed"], res["skipped"]) == (1, 1, 1)
    assert res["results"][1]["error"]["code"] == "conflict"
    assert "b0" in net.names() and "b2" not in net.names()


async def test_a_tap_named_twice_or_as_a_bridge_is_not_grouped(net: FakeNet,
                                                                call: Caller) -> None:
    await call("bridge.ensure", name="br0")
    cmds = [sub("tap.ensure", name="c0", bridge="br0"), sub("tap.ensure", name="c0", mtu=1400),
            sub("tap.ensure", name="c1")]
    res = await call("batch", commands=cmds)
    assert res["completed"] == 3
    assert res["results"][1]["result"]["created"] is False
    assert net.by_name("c0").mtu == 1400
