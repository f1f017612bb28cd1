"""The row-by-row replica (vnetd.ovs.rows.Replica) on stand-in IDL rows.

The real IDL needs an ovsdb-server (tests/integration/test_ovs.py); here plain
objects with the same attributes stand in for its rows, so the bookkeeping (what a
notice invalidates, what a delete removes) is checked alone.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any, cast

from vnetd.ovs.backend import Vlan
from vnetd.ovs.rows import Replica, TrackingIdl


def row(table: str, **cols: Any) -> SimpleNamespace:
    return SimpleNamespace(uuid=uuid.uuid4(), _table=SimpleNamespace(name=table), **cols)


def iface(name: str, ofport: int = 1) -> SimpleNamespace:
    return row("Interface", name=name, type="", ofport=[ofport], error=[], link_state=["up"],
               mac_in_use=["02:00:00:00:00:01"], external_ids={})


def port(name: str, ifaces: list[SimpleNamespace], tag: int | None = None) -> SimpleNamespace:
    return row("Port", name=name, interfaces=ifaces, tag=[tag] if tag is not None else [],
               trunks=[], vlan_mode=[], external_ids={"vnetd-owner": "v1"})


class FakeIdl:
    def __init__(self) -> None:
        self.tables = {t: SimpleNamespace(rows={}) for t in
                       ("Open_vSwitch", "Bridge", "Port", "Interface")}
        self.tables["Open_vSwitch"].rows[uuid.uuid4()] = SimpleNamespace(
            ovs_version=["3.1.0"], datapath_types=["netdev", "system"])
        self.dirty: set[tuple[str, uuid.UUID]] = set()

    def put(self, r: SimpleNamespace) -> None:
        self.tables[r._table.name].rows[r.uuid] = r
        TrackingIdl.notify(cast(Any, self), "create", r)

    def drop(self, r: SimpleNamespace) -> None:
        del self.tables[r._table.name].rows[r.uuid]
        TrackingIdl.notify(cast(Any, self), "delete", r)


def test_notices_update_only_what_changed() -> None:
    idl = FakeIdl()
    i0, i1 = iface("ob0"), iface("tap0", 2)
    p0, p1 = port("ob0", [i0]), port("tap0", [i1], tag=10)
    br = row("Bridge", name="ob0", ports=[p0, p1], datapath_type="netdev",
             external_ids={"vnetd-owner": "v1"})
    for r in (i0, i1, p0, p1, br):
        idl.put(r)
    replica = Replica()
    replica.rebuild(cast(Any, idl))
    assert idl.dirty == set()
    state = replica.state(cast(Any, idl))
    [b] = state.bridges
    assert b.name == "ob0" and [p.name for p in b.ports] == ["ob0", "tap0"]
    assert state.port("tap0") is not None and state.port("tap0").vlan == Vlan(tag=10)  # type: ignore[union-attr]
    assert state.ovs_version == "3.1.0" and state.datapath_types == ("netdev", "system")

    p1.tag = [20]  # a notice for the port only: the new tag shows
    TrackingIdl.notify(cast(Any, idl), "update", p1)
    replica.apply(cast(Any, idl))
    assert replica.state(cast(Any, idl)).port("tap0").vlan.tag == 20  # type: ignore[union-attr]

    p1.tag = [30]  # a change without a notice is not seen: the notices are the truth
    assert replica.state(cast(Any, idl)).port("tap0").vlan.tag == 20  # type: ignore[union-attr]

    br.ports = [p0]  # the port leaves, its rows go
    TrackingIdl.notify(cast(Any, idl), "update", br)
    idl.drop(p1)
    idl.drop(i1)
    replica.apply(cast(Any, idl))
    after = replica.state(cast(Any, idl))
    assert after.port("tap0") is None and [p.name for p in after.bridges[0].ports] == ["ob0"]
    assert replica.ports.keys() == {p0.uuid} and replica.interfaces.keys() == {i0.uuid}
