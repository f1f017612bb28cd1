"""Cleanup's `vxlan.orphan` rule: an owned VXLAN device whose bridge is gone."""

from __future__ import annotations

from tests.unit.test_cleanup import Env, by_name
from vnetd.handlers.cleanup import Rules


async def test_vxlan_without_bridge_is_an_orphan_after_grace() -> None:
    env = Env(Rules(tap_grace=1000, bridge_grace=100))
    env.net.add("br-seg", "bridge", owned=True)
    env.net.add("vx-used", "vxlan", owned=True, master="br-seg")
    env.net.add("vx-orphan", "vxlan", owned=True)
    env.net.add("vx-foreign", "vxlan")
    first = by_name(await env.sweep())
    assert first["vx-orphan"]["action"] == "kept" and first["vx-orphan"]["rule"] == "vxlan.orphan"
    assert "vx-used" not in first and "vx-foreign" not in first
    assert "br-seg" not in first  # its VXLAN port keeps the segment's bridge
    env.clock.now += 101
    second = by_name(await env.sweep())
    assert second["vx-orphan"]["action"] == "removed"
    assert env.net.names() >= {"br-seg", "vx-used", "vx-foreign"}
    assert "vx-orphan" not in env.net.names()
    assert ("cleanup.removed", "vx-orphan") in [(t, s) for t, s, _ in env.sink.events]


async def test_vxlan_attached_again_before_the_delete_is_kept() -> None:
    env = Env(Rules(tap_grace=1000, bridge_grace=0))
    env.net.add("br-seg", "bridge", owned=True)
    env.net.add("vx1", "vxlan", owned=True)
    dry = by_name(await env.sweep(dry_run=True))
    assert dry["vx1"]["action"] == "would_remove"
    env.net.by_name("vx1").master = env.net.index_of("br-seg")
    assert "vx1" not in by_name(await env.sweep())
    assert "vx1" in env.net.names()
