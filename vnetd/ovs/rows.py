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
from collections.abc import Iterable
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
    tag = _one(row.tag)
    return OvsPort(
        uuid=str(row.uuid), name=str(row.name), bridge=bridge,
        vlan=Vlan(tag=int(tag) if tag is not None else None,
                  trunks=tuple(sorted(int(t) for t in row.trunks)),
                  mode=_one(row.vlan_mode)),
        interfaces=tuple(sorted((interface_of(i) for i in row.interfaces),
                                key=lambda i: i.name)),
        external_ids=_ids(row.external_ids))


def bridge_of(row: Any) -> OvsBridge:
    name = str(row.name)
    return OvsBridge(
        uuid=str(row.uuid), name=name, datapath_type=str(row.datapath_type),
        ports=tuple(sorted((port_of(p, name) for p in row.ports), key=lambda p: p.name)),
        external_ids=_ids(row.external_ids))


def root_row(idl: ovs.db.idl.Idl) -> Any | None:
    """The Open_vSwitch table's single row (None before `ovs-vsctl init`)."""
    return next(iter(idl.tables["Open_vSwitch"].rows.values()), None)


def state_of(idl: ovs.db.idl.Idl) -> OvsState:
    root = root_row(idl)
    bridges: Iterable[Any] = idl.tables["Bridge"].rows.values()
    return OvsState(
        bridges=tuple(sorted((bridge_of(b) for b in bridges), key=lambda b: b.name)),
        ovs_version=_one(root.ovs_version) if root is not None else None,
        datapath_types=tuple(sorted(str(t) for t in root.datapath_types))
        if root is not None else ())
