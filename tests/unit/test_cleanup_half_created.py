"""The `half_created` cleanup rule: devices a cut-short creation left in CREATING_GROUP."""

from __future__ import annotations

import asyncio

from tests.unit.test_cleanup import Env, by_name
from vnetd.contract.base import link_lock
from vnetd.handlers.cleanup import HALF_CREATED_RULE, Rules
from vnetd.net.model import CREATING_GROUP, OWNER_ALIAS

RULES = Rules(tap_grace=1000, bridge_grace=1000, half_created_grace=60, lease_seconds=30)


async def test_a_half_created_bridge_and_vxlan_are_removed_after_their_grace() -> None:
    env = Env(RULES)
    env.net.add("br-cut", "bridge", group=CREATING_GROUP, up=False)  # killed before the mark
    env.net.add("vx-cut", "vxlan", owned=True, group=CREATING_GROUP, up=False)  # after it
    first = by_name(await env.sweep())
    assert first["br-cut"]["rule"] == HALF_CREATED_RULE
    assert first["br-cut"]["action"] == "kept" and "grace" in first["br-cut"]["reason"]
    assert first["vx-cut"]["action"] == "kept"
    # Nothing is written to an unfinished device (no clock in its alias).
    assert env.net.by_name("br-cut").alias is None
    assert env.net.by_name("vx-cut").alias == OWNER_ALIAS
    env.clock.now += 59
    assert by_name(await env.sweep())["br-cut"]["action"] == "kept"
    env.clock.now += 1
    third = by_name(await env.sweep())
    assert third["br-cut"]["action"] == "removed"
    assert third["vx-cut"]["action"] == "removed"
    assert not {"br-cut", "vx-cut"} & env.net.names()
    assert sorted(env.sink.events, key=lambda e: str(e[1])) == [
        ("cleanup.removed", "br-cut",
         {"kind": "bridge", "rule": HALF_CREATED_RULE, "idle_seconds": 60.0}),
        ("cleanup.removed", "vx-cut",
         {"kind": "vxlan", "rule": HALF_CREATED_RULE, "idle_seconds": 60.0})]


async def test_dry_run_lists_it_and_foreign_protected_or_used_ones_stay() -> None:
    env = Env(Rules(half_created_grace=0))
    env.net.add("br-cut", "bridge", group=CREATING_GROUP, up=False)
    env.net.add("br-other", "bridge", group=42, up=False)  # someone else's group
    env.net.add("br-foreign", "bridge", up=False)  # unowned, default group
    env.net.add("keep-cut", "bridge", group=CREATING_GROUP, up=False)  # protected name
    env.net.add("tap-cut", "tap", group=CREATING_GROUP, up=False)  # vnetd never does this
    env.net.add("br-used", "bridge", group=CREATING_GROUP, up=False)
    env.net.add("eth9", "device", master="br-used")
    dry = await env.sweep(dry_run=True)
    assert {c["name"]: c["action"] for c in dry["candidates"]} == {"br-cut": "would_remove"}
    assert dry["in_use"] == 1  # br-used has a port
    assert not [c for c in env.net.mutations() if c.method in ("delete_link", "set_link")]
    result = by_name(await env.sweep())
    assert result["br-cut"]["action"] == "removed"
    assert env.net.names() >= {"br-other", "br-foreign", "keep-cut", "tap-cut", "br-used"}


async def test_an_ensure_finishing_it_first_wins_over_the_sweep() -> None:
    env = Env(Rules(half_created_grace=0, bridge_grace=1000, lease_seconds=30))
    env.net.add("br0", "bridge", group=CREATING_GROUP, up=False)
    # The redelivered job finishes it while the sweep waits for br0's lock.
    finished = await env.job("bridge.ensure", name="br0")
    assert finished["created"] is True
    result = by_name(await env.sweep())
    assert result["br0"]["rule"] == "bridge.empty"  # a normal owned bridge now
    assert result["br0"]["action"] == "kept"
    assert "br0" in env.net.names()


async def test_the_recheck_under_the_lock_keeps_a_device_finished_meanwhile() -> None:
    env = Env(Rules(half_created_grace=0))
    env.net.add("br0", "bridge", group=CREATING_GROUP, up=False)
    async with env.dispatcher.locks.hold((link_lock("br0"),)):  # a job on br0 is running
        sweep = asyncio.create_task(env.sweep())
        await asyncio.sleep(0.1)
        assert not sweep.done()  # the removal waits for the job's lock
        left = await env.net.get_link("br0")
        assert left is not None
        await env.net.finish_creation(left)  # what that job (an ensure) does
    result = by_name(await sweep)
    assert result["br0"]["action"] == "kept"
    assert result["br0"]["reason"] == "its creation was finished since the first check"
    assert "br0" in env.net.names()


async def test_the_rule_can_be_switched_off() -> None:
    env = Env(Rules(half_created=False, half_created_grace=0, bridge_grace=0))
    env.net.add("br-cut", "bridge", group=CREATING_GROUP, up=False)
    assert (await env.sweep())["candidates"] == []
    assert "br-cut" in env.net.names()
