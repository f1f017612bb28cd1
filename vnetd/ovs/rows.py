"""The OVSDB schema vnetd replicates, and the IDL's rows read into vnetd's dataclasses.

Only the columns listed in COLUMNS are replicated (a cut-down schema keeps the
replica small and the monitor quiet about the statistics vswitchd writes).
The schema itself is asked of the server (`get_schema`), so the client always
matches the server it talks to, whatever version of OVS is installed.
Everything here runs on the IDL thread.
"""

from __future__ import annotations

import errno
import os
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller
import ovs.stream
import ovs.timeval

from vnetd.ovs.backend import OvsBridge, OvsError, OvsInterface, OvsPort, OvsState, Reason, Vlan

DATABASE = "Open_vSwitch"
COLUMNS: dict[str, list[str]] = {
    "Open_vSwitch": ["bridges", "cur_cfg", "next_cfg", "ovs_version", "datapath_types"],
    "Bridge": ["name", "ports", "datapath_type", "external_ids"],
    "Port": ["name", "interfaces", "tag", "trunks", "vlan_mode", "external_ids"],
    "Interface": ["name", "type", "ofport", "error", "link_state", "mac_in_use",
                  "external_ids"],
}


def fetch_schema(remote: str, timeout: float) -> ovs.db.idl.SchemaHelper:
    """The server's own schema, cut down to COLUMNS; OvsError(UNAVAILABLE) if unreachable."""
    deadline = ovs.timeval.msec() + timeout * 1000
    error, stream = ovs.stream.Stream.open_block(ovs.stream.Stream.open(remote),
                                                 int(timeout * 1000))
    if error:
        raise OvsError(Reason.UNAVAILABLE,
                       f"cannot connect to ovsdb-server at {remote}: {os.strerror(error)}")
    rpc = ovs.jsonrpc.Connection(stream)
    try:
        request = ovs.jsonrpc.Message.create_request("get_schema", [DATABASE])
        rpc.send(request)
        while True:
            rpc.run()
            error, msg = rpc.recv()
            if error == errno.EAGAIN:
                left = deadline - ovs.timeval.msec()
                if left <= 0:
                    raise OvsError(Reason.UNAVAILABLE,
                                   f"ovsdb-server at {remote} did not answer get_schema "
                                   f"within {timeout:g}s")
                poller = ovs.poller.Poller()
                rpc.wait(poller)
                rpc.recv_wait(poller)
                poller.timer_wait(int(left))
                poller.block()
                continue
            if error:
                raise OvsError(Reason.UNAVAILABLE,
                               f"ovsdb-server at {remote}: {os.strerror(error)}")
            if msg.id != request.id:
                continue  # e.g. an echo
            if msg.type != ovs.jsonrpc.Message.T_REPLY:
                raise OvsError(Reason.FAILED, f"get_schema failed: {msg.error}")
            helper = ovs.db.idl.SchemaHelper(schema_json=msg.result)
            for table, columns in COLUMNS.items():
                helper.register_columns(table, columns)
            return helper
    finally:
        rpc.close()


def _one(value: Any) -> Any:
    """An optional column (a list of at most one) as its value or None."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _ids(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in dict(value).items()}


def interface_of(row: Any) -> OvsInterface:
    ofport = _one(row.ofport)
    return OvsInterface(
        name=str(row.name), type=str(row.type),
        ofport=int(ofport) if ofport is not None and int(ofport) >= 0 else None,
        error=_one(row.error), link_state=_one(row.link_state),
        mac_in_use=_one(row.mac_in_use), external_ids=_ids(row.external_ids))


def port_of(row: Any, bridge: str | None) -> OvsPort:
    return OvsPort(
        uuid=str(row.uuid), name=str(row.name), bridge=bridge, vlan=_vlan_of(row),
        interfaces=tuple(sorted((interface_of(i) for i in row.interfaces),
                                key=lambda i: i.name)),
        external_ids=_ids(row.external_ids))


def bridge_of(row: Any) -> OvsBridge:
    name = str(row.name)
    return OvsBridge(
        uuid=str(row.uuid), name=name, datapath_type=str(row.datapath_type),
        ports=tuple(sorted((port_of(p, name) for p in row.ports), key=lambda p: p.name)),
        external_ids=_ids(row.external_ids))


class TrackingIdl(ovs.db.idl.Idl):  # type: ignore[misc]  # ovs has no type hints
    """The IDL, remembering which rows its monitor changed since the last look."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dirty: set[tuple[str, uuidlib.UUID]] = set()

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        self.dirty.add((row._table.name, row.uuid))


@dataclass(frozen=True, slots=True)
class _PortRow:
    name: str
    interfaces: tuple[uuidlib.UUID, ...]
    vlan: Vlan
    external_ids: dict[str, str]


@dataclass(frozen=True, slots=True)
class _BridgeRow:
    name: str
    ports: tuple[uuidlib.UUID, ...]
    datapath_type: str
    external_ids: dict[str, str]


class Replica:
    """What vnetd reads of each row, kept up to date row by row from the IDL's notices.

    Reading a row through the IDL converts every column on each access, which costs
    O(ports) per picture; this keeps the converted values and redoes only the rows
    the monitor changed, so a picture after one change costs little however many
    ports the switch has.
    """

    def __init__(self) -> None:
        self.interfaces: dict[uuidlib.UUID, OvsInterface] = {}
        self.ports: dict[uuidlib.UUID, _PortRow] = {}
        self.bridges: dict[uuidlib.UUID, _BridgeRow] = {}

    def rebuild(self, idl: TrackingIdl) -> None:
        idl.dirty.clear()
        self.interfaces = {u: interface_of(r) for u, r in idl.tables["Interface"].rows.items()}
        self.ports = {u: _port_row(r) for u, r in idl.tables["Port"].rows.items()}
        self.bridges = {u: _bridge_row(r) for u, r in idl.tables["Bridge"].rows.items()}

    def apply(self, idl: TrackingIdl) -> None:
        dirty, idl.dirty = idl.dirty, set()
        for table, uuid in dirty:
            row = idl.tables[table].rows.get(uuid) if table in idl.tables else None
            if table == "Interface":
                _store(self.interfaces, uuid, row, interface_of)
            elif table == "Port":
                _store(self.ports, uuid, row, _port_row)
            elif table == "Bridge":
                _store(self.bridges, uuid, row, _bridge_row)

    def state(self, idl: TrackingIdl) -> OvsState:
        bridges = []
        for buuid, b in self.bridges.items():
            ports = []
            for puuid in b.ports:
                p = self.ports.get(puuid)
                if p is None:
                    continue
                ifaces = tuple(sorted((self.interfaces[i] for i in p.interfaces
                                       if i in self.interfaces), key=lambda i: i.name))
                ports.append(OvsPort(str(puuid), p.name, b.name, p.vlan, ifaces,
                                     p.external_ids))
            bridges.append(OvsBridge(str(buuid), b.name, b.datapath_type,
                                     tuple(sorted(ports, key=lambda p: p.name)), b.external_ids))
        root = root_row(idl)
        return OvsState(
            bridges=tuple(sorted(bridges, key=lambda b: b.name)),
            ovs_version=_one(root.ovs_version) if root is not None else None,
            datapath_types=tuple(sorted(str(t) for t in root.datapath_types))
            if root is not None else ())


def _store(cache: dict[uuidlib.UUID, Any], uuid: uuidlib.UUID, row: Any,
           read: Callable[[Any], Any]) -> None:
    if row is None:
        cache.pop(uuid, None)
    else:
        cache[uuid] = read(row)


def _vlan_of(row: Any) -> Vlan:
    tag = _one(row.tag)
    return Vlan(tag=int(tag) if tag is not None else None,
                trunks=tuple(sorted(int(t) for t in row.trunks)), mode=_one(row.vlan_mode))


def _port_row(row: Any) -> _PortRow:
    return _PortRow(str(row.name), tuple(i.uuid for i in row.interfaces), _vlan_of(row),
                    _ids(row.external_ids))


def _bridge_row(row: Any) -> _BridgeRow:
    return _BridgeRow(str(row.name), tuple(p.uuid for p in row.ports),
                      str(row.datapath_type), _ids(row.external_ids))


def root_row(idl: ovs.db.idl.Idl) -> Any | None:
    """The Open_vSwitch table's single row (None before `ovs-vsctl init`)."""
    return next(iter(idl.tables["Open_vSwitch"].rows.values()), None)
