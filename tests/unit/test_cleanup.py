"""Cleanup rules, grace clocks, leases and re-checks on the FakeNet, with a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.fakes import FakeNet
from vnetd import metrics
from vnetd.contract.commands import parse_request
from vnetd.contract.errors import Unavailable
from vnetd.handlers.cleanup import (
    Rules,
    Sweeper,
    marker,
    parse_marker,
)
from vnetd.handlers.context import Context
from vnetd.handlers.dispatch import Dispatcher
from vnetd.handlers.leases import Leases
from vnetd.handlers.policy import Policy
from vnetd.handlers.registry import build_registry


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, dict[str, Any]]] = []

    def emit(self, type: str, subject: str | None, data: dict[str, Any]) -> None:
        self.events.append((type, subject, data))


class Refs:
    def __init__(self, refs: dict[str, str] | None = None) -> None:
        self.refs = refs or {}
        self.down = False
        self.calls = 0

    async def referenced_interfaces(self) -> dict[str, str]:
        self.calls += 1
        if self.down:
            raise Unavailable("not connected to libvirtd")
        return dict(self.refs)


class Env:
    def __init__(self, rules: Rules, *, restart_clocks: bool = False) -> None:
        self.net = FakeNet()
        self.clock = Clock()
        self.sink = Sink()
        self.refs = Refs()
        self.ctx = Context(host_id="hv1", net=self.net, policy=Policy(protected=("lo", "keep*")),
                           version="t", events=self.sink)
        self.dispatcher = Dispatcher(build_registry(), self.ctx)
        self.dispatcher.leases = Leases(self.clock)
        self.sweeper = Sweeper(self.net, self.ctx.policy, self.sink, rules,
                               locks=self.dispatcher.locks, leases=self.dispatcher.leases,
                               references=self.refs, restart_clocks=restart_clocks)
        self.ctx.cleanup = self.sweeper

    async def job(self, op: str, **args: Any) -> dict[str, Any]:
        return await self.dispatcher.execute(parse_request({"op": op, "args": args}))

    async def sweep(self, dry_run: bool = False) -> dict[str, Any]:
        return await self.job("cleanup.run", dry_run=dry_run)


def by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["candidates"]}


RULES = Rules(tap_grace=60, bridge_grace=120, lease_seconds=30)


async def test_idle_owned_tap_is_removed_only_after_its_grace() -> None:
    env = Env(RULES)
    env.net.add("tap1", "tap", owned=True, up=False)  # no carrier: nobody holds it
    first = await env.sweep()
    assert by_name(first)["tap1"]["action"] == "kept"
    assert "grace" in by_name(first)["tap1"]["reason"]
    assert "tap1" in env.net.names()
    env.clock.now += 59
    assert by_name(await env.sweep())["tap1"]["action"] == "kept"
    env.clock.now += 1
    before = metrics.CLEANUP_REMOVED.labels(kind="tap")._value.get()
    third = await env.sweep()
    assert by_name(third)["tap1"] == {**by_name(third)["tap1"], "action": "removed",
                                      "rule": "tap.idle"}
    assert "tap1" not in env.net.names()
    assert env.sink.events == [("cleanup.removed", "tap1",
                                {"kind": "tap", "rule": "tap.idle", "idle_seconds": 60.0})]
    assert metrics.CLEANUP_REMOVED.labels(kind="tap")._value.get() == before + 1
    again = await env.sweep()
    assert again["removed"] == 0
    assert again["candidates"] == []


async def test_tap_held_open_unowned_and_protected_are_never_candidates() -> None:
    env = Env(Rules(tap_grace=0, bridge_grace=0))
    env.net.add("held", "tap", owned=True, up=True)  # FakeNet: carrier follows up
    env.net.add("foreign", "tap", owned=False, up=False)
    env.net.add("keep1", "tap", owned=True, up=False)
    result = await env.sweep()
    assert result["candidates"] == []
    assert result["in_use"] == 1
    assert {"held", "foreign", "keep1"} <= env.net.names()
    assert not [c for c in env.net.mutations() if c.method == "delete_link"]


async def test_the_grace_clock_is_written_into_the_devices_own_alias() -> None:
    env = Env(RULES)
    env.net.add("tap1", "tap", owned=True, up=False)
    await env.sweep()
    alias = env.net.by_name("tap1").alias
    assert parse_marker(alias) == (1000.0, 0)
    assert alias is not None and alias.startswith("vnetd:v1 ")  # still ours
    # A one-shot run in a new process (no restart clamp) reads the clock back.
    fresh = Sweeper(env.net, env.ctx.policy, env.sink, RULES, locks=env.dispatcher.locks,
                    leases=Leases(env.clock), references=env.refs, restart_clocks=False)
    env.clock.now += 61
    assert by_name(await fresh.sweep())["tap1"]["action"] == "removed"


async def test_a_restarted_daemon_restarts_the_clock_and_keeps() -> None:
    env = Env(RULES)
    env.net.add("tap1", "tap", owned=True, up=False, alias=marker(10.0, 0))
    env.net.by_name("tap1").alias = marker(10.0, 0)
    restarted = Sweeper(env.net, env.ctx.policy, env.sink, RULES, locks=env.dispatcher.locks,
                        leases=Leases(env.clock), references=env.refs, restart_clocks=True)
    assert by_name(await restarted.sweep())["tap1"]["action"] == "kept"  # idle 990 s by marker
    env.clock.now += 60
    assert by_name(await restarted.sweep())["tap1"]["action"] == "removed"


async def test_a_marker_from_before_a_carrier_change_is_not_trusted() -> None:
    env = Env(RULES)
    env.net.add("tap1", "tap", owned=True, up=False)
    env.net.by_name("tap1").alias = marker(10.0, 7)  # the TAP was opened/closed since
    result = await env.sweep()
    assert by_name(result)["tap1"]["action"] == "kept"
    assert parse_marker(env.net.by_name("tap1").alias) == (1000.0, 0)


async def test_a_job_renews_the_lease_and_hold_seconds_keeps_longer() -> None:
    env = Env(Rules(tap_grace=0, bridge_grace=0, lease_seconds=30))
    await env.job("bridge.ensure", name="br0")
    await env.job("tap.ensure", name="tap1", bridge="br0", up=False)
    await env.job("tap.ensure", name="tap2", up=False, hold_seconds=300)
    env.net.by_name("tap1").up = False
    first = by_name(await env.sweep())
    assert first["tap1"]["action"] == "kept"
    assert first["tap1"]["reason"].startswith("leased")
    assert first["tap2"]["action"] == "kept"
    env.clock.now += 31
    second = by_name(await env.sweep())
    assert second["tap1"]["action"] == "removed"
    assert second["tap2"]["action"] == "kept"  # held for 300 s
    env.clock.now += 270
    third = by_name(await env.sweep())
    assert third["tap2"]["action"] == "removed"
    assert third["br0"]["action"] == "removed"  # empty once tap1 went


async def test_renewed_within_grace_restarts_the_idle_clock() -> None:
    env = Env(Rules(tap_grace=100, bridge_grace=100, lease_seconds=5))
    await env.job("tap.ensure", name="tap1", up=False)
    assert by_name(await env.sweep())["tap1"]["action"] == "kept"  # idle from now on
    env.clock.now += 90
    await env.job("tap.ensure", name="tap1", up=False)  # used again within grace
    env.clock.now += 50
    entry = by_name(await env.sweep())["tap1"]
    assert entry["action"] == "kept"
    assert entry["idle_seconds"] == 50


async def test_bridges_empty_removed_with_ports_or_references_kept() -> None:
    env = Env(Rules(tap_grace=1000, bridge_grace=0))
    env.net.add("br-empty", "bridge", owned=True)
    env.net.add("br-used", "bridge", owned=True)
    env.net.add("br-lv", "bridge", owned=True)
    env.net.add("tapx", "tap", owned=True, master="br-used", up=False)
    env.refs.refs = {"br-lv": "network default"}
    result = by_name(await env.sweep())
    assert result["br-empty"]["action"] == "removed"
    assert "br-used" not in result  # in use: not a candidate
    assert result["br-lv"] == {**result["br-lv"], "action": "kept",
                               "reason": "referenced by libvirt network default"}
    assert env.net.names() >= {"br-used", "br-lv", "tapx"}


async def test_references_unknown_keep_everything() -> None:
    env = Env(Rules(tap_grace=0, bridge_grace=0))
    env.net.add("tap1", "tap", owned=True, up=False)
    env.refs.down = True
    result = by_name(await env.sweep())
    assert result["tap1"]["action"] == "kept"
    assert "libvirt references unknown" in result["tap1"]["reason"]
    assert "tap1" in env.net.names()


async def test_dry_run_changes_nothing_and_says_what_would_go() -> None:
    env = Env(Rules(tap_grace=0, bridge_grace=0))
    env.net.add("tap1", "tap", owned=True, up=False)
    env.net.add("br0", "bridge", owned=True)
    env.net.forget_calls()
    result = await env.sweep(dry_run=True)
    assert {c["name"]: c["action"] for c in result["candidates"]} == {
        "tap1": "would_remove", "br0": "would_remove"}
    assert result["removed"] == 0
    assert env.net.mutations() == []
    assert env.sink.events == []


async def test_a_job_between_the_first_check_and_the_delete_wins() -> None:
    """The re-check under the lock sees a lease a job took after the first look."""
    env = Env(Rules(tap_grace=0, bridge_grace=0, lease_seconds=30))
    env.net.add("tap1", "tap", owned=True, up=False)
    real = env.refs.referenced_interfaces

    async def job_in_between() -> dict[str, str]:
        if env.refs.calls == 1:  # the second look, right before the deletes
            await env.job("tap.ensure", name="tap1", up=False)
        return await real()

    env.refs.referenced_interfaces = job_in_between  # type: ignore[method-assign]
    result = by_name(await env.sweep())
    assert result["tap1"]["action"] == "kept"
    assert result["tap1"]["reason"].startswith("leased")
    assert "tap1" in env.net.names()


async def test_a_device_replaced_since_the_first_check_is_kept() -> None:
    env = Env(Rules(tap_grace=0, bridge_grace=0))
    env.net.add("tap1", "tap", owned=True, up=False)
    real = env.refs.referenced_interfaces

    async def replace() -> dict[str, str]:
        if env.refs.calls == 1:
            del env.net.links[env.net.index_of("tap1")]
            env.net.add("tap1", "tap", owned=False, up=False)  # someone else's now
        return await real()

    env.refs.referenced_interfaces = replace  # type: ignore[method-assign]
    result = by_name(await env.sweep())
    assert result["tap1"]["action"] == "kept"
    assert "tap1" in env.net.names()


async def test_rules_can_be_switched_off() -> None:
    env = Env(Rules(taps=False, bridges=False, tap_grace=0, bridge_grace=0))
    env.net.add("tap1", "tap", owned=True, up=False)
    env.net.add("br0", "bridge", owned=True)
    result = await env.sweep()
    assert result["checked"] == 0
    assert {"tap1", "br0"} <= env.net.names()


class Networks:
    def __init__(self) -> None:
        self.nets = {"old": -5.0, "young": 50.0}
        self.destroyed: list[str] = []

    async def expiring_networks(self) -> list[tuple[str, float]]:
        return list(self.nets.items())

    async def remove_expired(self, name: str) -> bool:
        if self.nets.get(name, 1) > 0:
            return False
        self.destroyed.append(name)
        del self.nets[name]
        return True


async def test_transient_networks_past_their_ttl_are_destroyed() -> None:
    env = Env(RULES)
    nets = Networks()
    env.sweeper.networks = nets
    dry = by_name(await env.sweep(dry_run=True))
    assert dry["old"]["action"] == "would_remove"
    assert nets.destroyed == []
    result = by_name(await env.sweep())
    assert result["old"]["action"] == "removed"
    assert result["young"]["action"] == "kept"
    assert nets.destroyed == ["old"]
    assert ("cleanup.removed", "old",
            {"kind": "network", "rule": "network.ttl", "expired_seconds_ago": 5.0}) \
        in env.sink.events


def test_hold_seconds_is_validated() -> None:
    ok = parse_request({"op": "tap.ensure", "args": {"name": "t", "hold_seconds": 60}})
    assert getattr(ok, "hold_seconds", None) == 60
    for bad in (-1, 8 * 86_400, "60"):
        with pytest.raises(Exception, match="hold_seconds"):
            parse_request({"op": "port.attach",
                           "args": {"name": "t", "bridge": "b", "hold_seconds": bad}})
