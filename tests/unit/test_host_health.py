"""host.health says why it is degraded: which component, since when, its last error."""

from __future__ import annotations

from tests.unit.fakes import Caller, FakeNet
from vnetd.handlers.context import Context
from vnetd.handlers.host import ComponentStates, note_error


class Clock:
    def __init__(self) -> None:
        self.now = 1_764_626_400.0  # 2025-12-01T22:00:00Z

    def __call__(self) -> float:
        return self.now


def test_states_remember_since_when_and_the_last_error() -> None:
    clock = Clock()
    states = ComponentStates({"libvirt": "connecting"}, clock=clock)
    clock.now += 5
    states["libvirt"] = "degraded"
    note_error(states, "libvirt", "cannot connect to qemu:///system: no socket")
    clock.now += 60
    states["libvirt"] = "degraded"  # the same state again: "since" does not move
    d = states.details()["libvirt"]
    assert d == {"state": "degraded", "since": "2025-12-01T22:00:05Z",
                 "last_error": "cannot connect to qemu:///system: no socket",
                 "last_error_at": "2025-12-01T22:00:05Z"}
    assert dict(states) == {"libvirt": "degraded"}  # still a plain mapping to its readers
    note_error({"libvirt": "degraded"}, "libvirt", "x")  # a plain dict keeps no reasons


async def test_degraded_health_gives_the_reasons(ctx: Context, call: Caller) -> None:
    clock = Clock()
    states = ComponentStates({"libvirt": "degraded"}, clock=clock)
    note_error(states, "libvirt", "cannot connect to qemu:///system: Failed to connect socket")
    ctx.components = lambda: {**states, "broker": "connected"}
    ctx.component_details = states.details
    result = await call("host.health")
    assert result["status"] == "degraded"
    assert result["reasons"] == [
        "libvirt degraded since 2025-12-01T22:00:00Z: cannot connect to qemu:///system: "
        "Failed to connect socket"]
    assert result["details"]["libvirt"]["last_error"].endswith("Failed to connect socket")


async def test_kernel_reasons_without_details(net: FakeNet, call: Caller) -> None:
    net.kernel_features["tun_device"] = False
    result = await call("host.health")
    assert result["status"] == "degraded"
    assert result["reasons"] == ["kernel: no tun device support"]


async def test_healthy_result_keeps_its_shape(call: Caller) -> None:
    assert "reasons" not in await call("host.health")
