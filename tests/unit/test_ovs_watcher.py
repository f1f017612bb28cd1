"""The OVS watcher's events (pictures of the database in, one event per change out) and
the ovs_bridge.empty cleanup rule, on the FakeOvs."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, cast

from tests.unit.fakes import FakeNet, RecordingSink
from tests.unit.ovs_fakes import FakeOvs
from vnetd.handlers.cleanup import Rules, Sweeper
from vnetd.handlers.context import Context
from vnetd.handlers.dispatch import KeyedLocks
from vnetd.handlers.leases import Leases
from vnetd.handlers.policy import Policy
from vnetd.ovs.backend import OvsOptions, OvsState, Vlan
from vnetd.watchers.ovs import OvsWatcher

OWNED = {"vnetd-owner": "v1"}


class Sink(RecordingSink):
    def types(self) -> list[tuple[str, str | None]]:
        """Then forgets them: each check sees only what happened since the last one."""
        out = super().types()
        self.events.clear()
        return out


def watcher() -> tuple[OvsWatcher, Sink, dict[str, str]]:
    sink = Sink()
    ctx = Context(host_id="hv1", net=FakeNet(), policy=Policy(), version="t", events=sink)
    states: dict[str, str] = {}
    backend = cast(Any, type("Backend", (), {"remote": "unix:/fake"})())
    return OvsWatcher(backend, ctx, states, OvsOptions()), sink, states


async def picture(fake: FakeOvs) -> OvsState:
    return await fake.snapshot()


async def test_first_picture_is_the_baseline_then_each_change_is_one_event() -> None:
    w, sink, _ = watcher()
    fake = FakeOvs()
    fake.put_bridge("ob0", owner=OWNED)
    w._on_picture(await picture(fake), False)
    assert sink.types() == []  # the baseline is what host.snapshot gives

    fake.put_bridge("ob1", owner=OWNED)
    w._on_picture(await picture(fake), False)
    assert sink.types() == [("ovs.bridge.added", "ob1")]

    port = fake.put_port("ob1", "tap0", owner=OWNED, vlan=Vlan(tag=1))
    w._on_picture(await picture(fake), False)
    assert sink.types() == [("ovs.port.added", "tap0")]  # not also a bridge change

    await fake.set_port_vlan(port.uuid, Vlan(tag=2))
    w._on_picture(await picture(fake), False)
    [(t, s, data)] = sink.events
    assert (t, s) == ("ovs.port.changed", "tap0")
    assert data["changes"] == ["tag"] and data["previous"] == {"tag": 1} and data["tag"] == 2
    sink.events.clear()

    w._on_picture(await picture(fake), False)  # the same picture again: nothing
    assert sink.types() == []

    del fake.bridges["ob1"]  # a bridge goes with its ports: ports first, then the bridge
    w._on_picture(await picture(fake), False)
    assert sink.types() == [("ovs.port.removed", "tap0"), ("ovs.bridge.removed", "ob1")]


async def test_reconnect_reports_differences_as_resync() -> None:
    w, sink, _ = watcher()
    fake = FakeOvs()
    fake.put_bridge("ob0", owner=OWNED)
    w._on_picture(await picture(fake), False)
    fake.bridges["ob0"] = replace(fake.bridges["ob0"], datapath_type="system")
    fake.put_bridge("ob2")
    w._on_picture(await picture(fake), True)
    events = {(t, s): d for t, s, d in sink.events}
    assert events[("ovs.bridge.changed", "ob0")]["changes"] == ["datapath_type"]
    assert events[("ovs.bridge.added", "ob2")]["owned"] is False
    assert all(d["resync"] is True for d in events.values())
    assert w.resyncs == 1


async def test_a_row_replaced_under_the_same_name_is_removed_then_added() -> None:
    w, sink, _ = watcher()
    fake = FakeOvs()
    fake.put_bridge("ob0", owner=OWNED)
    w._on_picture(await picture(fake), False)
    fake.put_bridge("ob0", owner=OWNED)  # new row uuid
    w._on_picture(await picture(fake), False)
    assert sink.types() == [("ovs.bridge.removed", "ob0"), ("ovs.bridge.added", "ob0")]


def test_connection_state_goes_to_states() -> None:
    w, _, states = watcher()
    w._on_state("degraded", "connection refused")
    assert states["ovs"] == "degraded"
    w._on_state("connected", None)
    assert states["ovs"] == "connected"


# ---------------------------------------------------------------- cleanup
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sweeper(fake: FakeOvs | None, clock: Clock, **rules: Any) -> tuple[Sweeper, Sink, Leases]:
    sink = Sink()
    leases = Leases(clock)
    s = Sweeper(FakeNet(), Policy(protected=("lo", "br-keep*")), sink,
                Rules(bridge_grace=10, lease_seconds=5, **rules), locks=KeyedLocks(),
                leases=leases, ovs=lambda: fake, clock=clock, restart_clocks=False)
    return s, sink, leases


def ovs_rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["candidates"] if c["kind"] == "ovs_bridge"}


async def test_an_owned_empty_bridge_is_removed_after_its_grace_only() -> None:
    clock, fake = Clock(), FakeOvs()
    fake.put_bridge("orph0", owner=OWNED)
    fake.put_bridge("busy0", owner=OWNED)
    fake.put_port("busy0", "tap0", owner=OWNED)
    fake.put_bridge("foreign0")
    fake.put_bridge("br-keep1", owner=OWNED)
    s, sink, _ = sweeper(fake, clock)
    first = ovs_rows(await s.sweep())
    assert first["orph0"]["action"] == "kept" and "grace" in first["orph0"]["reason"]
    assert set(first) == {"orph0"}  # in use, foreign and protected are not candidates
    clock.now += 11
    dry = ovs_rows(await s.sweep(dry_run=True))
    assert dry["orph0"]["action"] == "would_remove" and "orph0" in fake.bridges
    done = ovs_rows(await s.sweep())
    assert done["orph0"]["action"] == "removed"
    assert set(fake.bridges) == {"busy0", "foreign0", "br-keep1"}
    assert sink.events == [("cleanup.removed", "orph0",
                            {"kind": "ovs_bridge", "rule": "ovs_bridge.empty",
                             "idle_seconds": 11.0})]


async def test_a_leased_or_unreachable_bridge_is_kept() -> None:
    clock, fake = Clock(), FakeOvs()
    fake.put_bridge("orph1", owner=OWNED)
    s, _, leases = sweeper(fake, clock)
    await s.sweep()
    clock.now += 11
    leases.renew("orph1", 0)  # a job just used it
    kept = ovs_rows(await s.sweep())
    assert kept["orph1"]["action"] == "kept" and "leased" in kept["orph1"]["reason"]
    clock.now += 11
    fake.connected = False
    down = ovs_rows(await s.sweep())
    assert down["*"]["action"] == "kept" and "unknown" in down["*"]["reason"]
    assert "orph1" in fake.bridges
    off, _, _ = sweeper(fake, clock, ovs_bridges=False)
    fake.connected = True
    assert ovs_rows(await off.sweep()) == {}


async def test_a_bridge_that_got_a_port_before_the_delete_is_kept() -> None:
    clock, fake = Clock(), FakeOvs()
    fake.put_bridge("orph2", owner=OWNED)
    s, _, _ = sweeper(fake, clock)
    await s.sweep()
    clock.now += 11
    real = fake.snapshot
    calls = 0

    async def port_arrives() -> OvsState:
        nonlocal calls
        calls += 1
        if calls == 2:  # the re-check under the lock
            fake.put_port("orph2", "tap9", owner=OWNED)
        return await real()

    fake.snapshot = port_arrives  # type: ignore[method-assign]
    res = ovs_rows(await s.sweep())
    assert res["orph2"]["action"] == "kept" and "re-check" in res["orph2"]["reason"]
    assert "orph2" in fake.bridges
    await asyncio.sleep(0)
