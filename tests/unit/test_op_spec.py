"""Each op is described once (its model's OpSpec), and everything reads it from there.

The wire contract is pinned here as it was before the spec existed: the op list,
each op's arg names, its locks, leases and event subject, and which ops are
read-only. A new op adds itself to WIRE and SAMPLES (docs/contract.md, Adding an op).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from tests.unit.fakes import FakeNet
from tests.unit.ovs_fakes import FakeOvs
from tests.unit.test_network_handlers import NAT, FakeVirt
from vnetd.contract.base import Command, OpSpec
from vnetd.contract.commands import OPS, build_op_table, parse_request, spec_of
from vnetd.contract.errors import InvalidArgument
from vnetd.events.commands import CommandEvents
from vnetd.handlers.context import Context
from vnetd.handlers.dispatch import Dispatcher
from vnetd.handlers.policy import Policy
from vnetd.handlers.registry import build_registry
from vnetd.service.metrics import JobMetrics

# op -> its args, as the wire knows them.
WIRE: dict[str, set[str]] = {
    "batch": {"commands", "stop_on_error"},
    "bridge.delete": {"name"},
    "bridge.ensure": {"name", "mtu", "mac", "stp", "forward_delay", "ageing_time",
                      "vlan_filtering", "ipv6", "up", "hold_seconds"},
    "bridge.list": set(),
    "cleanup.run": {"dry_run"},
    "fdb.converge": {"name", "remotes", "fdb", "neighbours"},
    "host.health": set(),
    "host.snapshot": set(),
    "link.list": {"kind", "owned_only"},
    "link.set": {"name", "up", "mtu", "mac"},
    "network.autostart": {"name", "enabled"},
    "network.create": {"name", "spec", "xml", "ttl_seconds"},
    "network.define": {"name", "spec", "xml", "autostart", "start", "replace"},
    "network.destroy": {"name"},
    "network.dumpxml": {"name", "inactive"},
    "network.list": set(),
    "network.start": {"name"},
    "network.undefine": {"name"},
    "network.update": {"name", "action", "host", "range", "family", "live", "config"},
    "port.attach": {"name", "bridge", "hold_seconds"},
    "port.detach": {"name"},
    "tap.delete": {"name"},
    "tap.ensure": {"name", "bridge", "mtu", "mac", "owner_uid", "group_gid", "multi_queue",
                   "vnet_hdr", "ipv6", "up", "hold_seconds"},
    "ovs.bridge.delete": {"name"},
    "ovs.bridge.ensure": {"name", "hold_seconds"},
    "ovs.bridge.list": set(),
    "ovs.port.attach": {"name", "bridge", "tag", "trunks", "vlan_mode", "hold_seconds"},
    "ovs.port.detach": {"name"},
    "vxlan.delete": {"name"},
    "vxlan.ensure": {"name", "vni", "local", "dev", "dstport", "learning", "proxy", "ttl", "tos",
                     "mtu", "bridge", "up"},
}

READ_ONLY = {"host.health", "host.snapshot", "bridge.list", "link.list", "network.list",
             "network.dumpxml", "ovs.bridge.list"}

# op -> (valid args, exclusive lock keys, shared lock keys, leased names, hold, subject)
SAMPLES: dict[str, tuple[dict[str, Any], tuple[str, ...], tuple[str, ...], tuple[str, ...],
                         float, str | None]] = {
    "bridge.ensure": ({"name": "br0", "hold_seconds": 30.0}, ("link:br0",), (), ("br0",),
                      30.0, "br0"),
    "bridge.delete": ({"name": "br0"}, ("link:br0",), (), (), 0.0, "br0"),
    "bridge.list": ({}, (), (), (), 0.0, None),
    "tap.ensure": ({"name": "tap0", "bridge": "br0"}, ("link:tap0",), ("link:br0",),
                   ("tap0", "br0"), 0.0, "tap0"),
    "tap.delete": ({"name": "tap0"}, ("link:tap0",), (), (), 0.0, "tap0"),
    "port.attach": ({"name": "eth1", "bridge": "br0", "hold_seconds": 5.0}, ("link:eth1",),
                    ("link:br0",), ("eth1", "br0"), 5.0, "eth1"),
    "port.detach": ({"name": "eth1"}, ("link:eth1",), (), (), 0.0, "eth1"),
    "link.set": ({"name": "tap0", "up": False}, ("link:tap0",), (), (), 0.0, "tap0"),
    "link.list": ({"owned_only": True}, (), (), (), 0.0, None),
    "host.snapshot": ({}, (), (), (), 0.0, None),
    "host.health": ({}, (), (), (), 0.0, None),
    "batch": ({"commands": [{"op": "bridge.ensure", "args": {"name": "br0"}}]}, (), (), (),
              0.0, None),
    "cleanup.run": ({"dry_run": True}, (), (), (), 0.0, None),
    "network.define": ({"name": "n1", "spec": NAT}, ("network:n1",), (), (), 0.0, "n1"),
    "network.create": ({"name": "n1", "spec": NAT}, ("network:n1",), (), (), 0.0, "n1"),
    "network.start": ({"name": "n1"}, ("network:n1",), (), (), 0.0, "n1"),
    "network.destroy": ({"name": "n1"}, ("network:n1",), (), (), 0.0, "n1"),
    "network.undefine": ({"name": "n1"}, ("network:n1",), (), (), 0.0, "n1"),
    "network.autostart": ({"name": "n1", "enabled": True}, ("network:n1",), (), (), 0.0, "n1"),
    "network.dumpxml": ({"name": "n1"}, ("network:n1",), (), (), 0.0, "n1"),
    "network.list": ({}, (), (), (), 0.0, None),
    "network.update": ({"name": "n1", "action": "add",
                        "host": {"mac": "02:00:00:00:00:01", "ip": "192.168.150.20"}},
                       ("network:n1",), (), (), 0.0, "n1"),
    "vxlan.ensure": ({"name": "vx1", "vni": 5, "local": "192.0.2.1", "bridge": "br0"},
                     ("link:vx1",), ("link:br0",), ("vx1", "br0"), 0.0, "vx1"),
    "vxlan.delete": ({"name": "vx1"}, ("link:vx1",), (), (), 0.0, "vx1"),
    "fdb.converge": ({"name": "vx1", "remotes": ["192.0.2.2"]}, ("link:vx1",), (), (), 0.0,
                     "vx1"),
    "ovs.bridge.ensure": ({"name": "ob0", "hold_seconds": 9.0}, ("link:ob0",), (), ("ob0",),
                          9.0, "ob0"),
    "ovs.bridge.delete": ({"name": "ob0"}, ("link:ob0",), (), (), 0.0, "ob0"),
    "ovs.bridge.list": ({}, (), (), (), 0.0, None),
    "ovs.port.attach": ({"name": "eth1", "bridge": "ob0", "tag": 10}, ("link:eth1",),
                        ("link:ob0",), ("eth1", "ob0"), 0.0, "eth1"),
    "ovs.port.detach": ({"name": "tap0"}, ("link:tap0",), (), (), 0.0, "tap0"),
}


def test_the_op_list_and_each_ops_args_are_unchanged() -> None:
    assert {op: set(model.model_fields) for op, model in OPS.items()} == WIRE


def test_every_op_declares_its_own_spec() -> None:
    for op, model in OPS.items():
        assert isinstance(model.__dict__.get("op_spec"), OpSpec), op
        assert model.op == op
        assert model.op_spec.summary, op


def test_every_served_model_is_an_op_with_a_spec_and_every_op_is_served() -> None:
    registry = build_registry()
    for model in registry:
        assert OPS.get(model.op) is model, model.__name__
        assert isinstance(model.__dict__.get("op_spec"), OpSpec), model.__name__
    # batch is the dispatcher's own
    assert {m.op for m in registry} == set(OPS) - {"batch"}


def test_read_only_ops_are_the_ones_they_were() -> None:
    assert {op for op, model in OPS.items() if model.op_spec.read_only} == READ_ONLY


@pytest.mark.parametrize("op", sorted(WIRE))
def test_locks_leases_and_subject_read_from_the_spec(op: str) -> None:
    args, exclusive, shared, leased, hold, subject = SAMPLES[op]
    cmd = parse_request({"op": op, "args": args})
    assert cmd.lock_keys() == exclusive
    assert cmd.shared_lock_keys() == shared
    assert cmd.leased() == (leased, hold)
    assert cmd.event_subject() == subject


def test_tap_without_bridge_locks_and_leases_only_itself() -> None:
    cmd = parse_request({"op": "tap.ensure", "args": {"name": "tap0"}})
    assert (cmd.lock_keys(), cmd.shared_lock_keys(), cmd.leased()) == (
        ("link:tap0",), (), (("tap0",), 0.0))


@dataclass
class Recorder:
    """An EventSink that keeps (type, subject) of what it is given."""

    events: list[tuple[str, str | None]] = field(default_factory=list)

    def emit(self, type: str, subject: str | None, data: dict[str, Any]) -> None:
        self.events.append((type, subject))


@dataclass
class Job:
    op: str
    subject: str | None
    ok: bool = True
    message_id: str | None = "m1"
    correlation_id: str | None = None
    error_code: str | None = None
    duration: float = 0.001
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    duplicate: bool = False


async def test_read_only_ops_lease_nothing_and_publish_no_command_event() -> None:
    """Every op runs through the dispatcher; a read-only one leaves no lease and no event,
    and does not ask the metrics for an owned-device refresh. The others do all three
    as their spec says (so the check can fail)."""
    net = FakeNet()
    net.add("eth1")
    virt = FakeVirt()
    ctx = Context(host_id="hv1", net=net, policy=Policy(attachable=("eth*",)), version="t",
                  virt=virt, ovs=FakeOvs())
    dispatcher = Dispatcher(build_registry(), ctx)
    sink = Recorder()
    events = CommandEvents(sink)
    changed: list[str] = []
    metrics = JobMetrics()
    # (eth1 joins the OVS bridge before port.attach puts it in br0: one bridge at a time)
    order = ["bridge.ensure", "ovs.bridge.ensure", "ovs.port.attach", "tap.ensure",
             "port.attach", "network.define", *sorted(WIRE)]
    for op in dict.fromkeys(order):
        args = SAMPLES[op][0]
        before = {n: dispatcher.leases.get(n) for n in ("br0", "tap0", "eth1", "ob0")}
        before_copy = {n: (v.last_used, v.hold_until) if v else None for n, v in before.items()}
        cmd = parse_request({"op": op, "args": args})
        try:
            result: dict[str, Any] | None = await dispatcher.execute(cmd)
        except Exception:  # a failed job still says what it is; leases are what counts here
            result = None
        after = {n: dispatcher.leases.get(n) for n in ("br0", "tap0", "eth1", "ob0")}
        after_copy = {n: (v.last_used, v.hold_until) if v else None for n, v in after.items()}
        sink.events.clear()
        events.job_finished(Job(op, cmd.event_subject(), ok=result is not None, result=result,
                                error=None if result is not None else {"code": "x"}))
        metrics.on_change = lambda op=op: changed.append(op)
        metrics.job_finished(Job(op, cmd.event_subject()))  # type: ignore[arg-type]
        if op in READ_ONLY:
            assert after_copy == before_copy, op
            assert sink.events == [], op
            assert op not in changed
        else:
            assert len(sink.events) == 1, op
            assert sink.events[0][1] == SAMPLES[op][5]
            assert op in changed
            if SAMPLES[op][3]:
                assert after_copy != before_copy, op
    assert dispatcher.leases.get("br0") is not None


def test_an_invalid_request_is_still_published_as_failed() -> None:
    sink = Recorder()
    CommandEvents(sink).job_finished(Job("?", None, ok=False, error_code="invalid_argument"))
    assert sink.events == [("command.failed", None)]
    assert spec_of("?") is None


def test_batch_event_carries_only_the_summary() -> None:
    seen: list[dict[str, Any]] = []

    class Data:
        def emit(self, type: str, subject: str | None, data: dict[str, Any]) -> None:
            seen.append(data)

    CommandEvents(Data()).job_finished(Job("batch", None, result={
        "results": [{}], "completed": 1, "failed": 0, "skipped": 0}))
    assert seen[0]["result"] == {"completed": 1, "failed": 0, "skipped": 0}


# -- the table refuses ops that are not described -------------------------------------

class NoSpec(Command):
    op: ClassVar[str] = "x.nospec"
    name: str


class InheritsSpec(NoSpec):
    op: ClassVar[str] = "x.inherits"


class Described(Command):
    op: ClassVar[str] = "x.described"
    op_spec: ClassVar[OpSpec] = OpSpec("a test op", exclusive=("name",), leases=("name",))
    name: str


def test_an_op_without_a_spec_is_refused() -> None:
    with pytest.raises(TypeError, match="declares no op_spec"):
        build_op_table([NoSpec])
    NoSpec.op_spec = Described.op_spec  # type: ignore[misc]
    try:
        with pytest.raises(TypeError, match="declares no op_spec"):
            build_op_table([InheritsSpec])  # a spec must be the op's own
    finally:
        del NoSpec.op_spec


@pytest.mark.parametrize(("spec", "problem"), [
    (OpSpec("s", exclusive=("nom",)), "unknown field 'nom'"),
    (OpSpec("s", shared=("name",), leases=("name", "other")), "unknown field 'other'"),
    (OpSpec("s", leases=("name",)), "without locking them"),
    (OpSpec("s", read_only=True, exclusive=("name",), leases=("name",)), "read-only"),
    (OpSpec("s", subject="subject"), "unknown field 'subject'"),
    (OpSpec("s", space="ovsdb"), "lock space"),
    (OpSpec(""), "no summary"),
])
def test_a_spec_that_does_not_fit_its_model_is_refused(spec: OpSpec, problem: str) -> None:
    class Bad(Command):
        op: ClassVar[str] = "x.bad"
        op_spec: ClassVar[OpSpec] = spec
        name: str

    with pytest.raises(TypeError, match=problem):
        build_op_table([Bad])


def test_an_op_listed_twice_is_refused_and_a_table_serves_only_its_ops() -> None:
    with pytest.raises(ValueError, match="twice"):
        build_op_table([Described], [Described])
    table = build_op_table([Described])
    assert table["x.described"] is Described
    with pytest.raises(TypeError):
        table["y"] = Described  # type: ignore[index]
    assert isinstance(parse_request({"op": "x.described", "args": {"name": "a"}}, table),
                      Described)
    with pytest.raises(InvalidArgument, match=r"unknown op 'bridge\.list'"):
        parse_request({"op": "bridge.list"}, table)


def test_batch_parses_its_commands_against_the_same_table() -> None:
    from vnetd.contract.commands import LINK_OPS

    table = build_op_table([m for m in LINK_OPS if m.op != "tap.delete"])
    body = {"op": "batch", "args": {"commands": [{"op": "tap.delete", "args": {"name": "t"}}]}}
    assert parse_request(body).commands[0].op == "tap.delete"  # type: ignore[attr-defined]
    with pytest.raises(InvalidArgument, match=r"unknown op 'tap\.delete'"):
        parse_request(body, table)


def test_the_docs_op_table_is_the_one_the_specs_give() -> None:
    from pathlib import Path

    from vnetd.contract import optable

    doc = (Path(__file__).parents[2] / "docs" / "contract.md").read_text(encoding="utf-8")
    begin, end = doc.index(optable.BEGIN), doc.index(optable.END) + len(optable.END)
    assert doc[begin:end] == optable.render(), "run: python -m vnetd.contract.optable"
