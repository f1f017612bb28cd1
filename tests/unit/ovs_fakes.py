"""An in-memory fake of vnetd's OvsBackend Protocol, for the unit tier.

It keeps the OVSDB rules handlers depend on: bridge, port and interface names
are unique (a taken name is Reason.CONFLICT, like the schema's indexes), rows
are named by uuid (a vanished row is NOT_FOUND), a delete whose row no longer
carries the expected external_ids fails with CHANGED (the verify), and a
bridge comes with its internal port. `connected = False` makes every call fail
with UNAVAILABLE. Every mutating call is logged so tests can say "nothing changed".
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from vnetd.ovs.backend import (
    OvsBackend,
    OvsBridge,
    OvsError,
    OvsInterface,
    OvsPort,
    OvsState,
    Reason,
    Vlan,
)

_ids = itertools.count(1)


def _uuid() -> str:
    return f"00000000-0000-0000-0000-{next(_ids):012d}"


@dataclass
class FakeOvs:
    remote: str = "unix:/fake/db.sock"
    bridges: dict[str, OvsBridge] = field(default_factory=dict)
    connected: bool = True
    calls: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        return "connected" if self.connected else "degraded"

    @property
    def last_error(self) -> str | None:
        return None if self.connected else "connection refused"

    # -- test set-up (not logged) ------------------------------------------------
    def put_bridge(self, name: str, *, owner: Mapping[str, str] | None = None,
                   datapath_type: str = "netdev") -> OvsBridge:
        internal = OvsPort(_uuid(), name, name, Vlan(), (
            OvsInterface(name, "internal", 65534, None, "up", None, dict(owner or {})),),
            dict(owner or {}))
        br = OvsBridge(_uuid(), name, datapath_type, (internal,), dict(owner or {}))
        self.bridges[name] = br
        return br

    def put_port(self, bridge: str, name: str, *, owner: Mapping[str, str] | None = None,
                 vlan: Vlan | None = None) -> OvsPort:
        br = self.bridges[bridge]
        vlan = vlan or Vlan()
        port = OvsPort(_uuid(), name, bridge, vlan, (
            OvsInterface(name, "", len(br.ports), None, "up", None, dict(owner or {})),),
            dict(owner or {}))
        self.bridges[bridge] = replace(br, ports=(*br.ports, port))
        return port

    def retag(self, bridge: str, uuid: str, external_ids: Mapping[str, str]) -> None:
        """Someone else rewrites a row's external_ids (between a check and a delete)."""
        br = self.bridges[bridge]
        if br.uuid == uuid:
            self.bridges[bridge] = replace(br, external_ids=dict(external_ids))

    @property
    def mutations(self) -> list[str]:
        return list(self.calls)

    # -- OvsBackend ---------------------------------------------------------------
    def _up(self) -> None:
        if not self.connected:
            raise OvsError(Reason.UNAVAILABLE, f"no connection to ovsdb-server at {self.remote}")

    def _names(self) -> set[str]:
        return {p.name for b in self.bridges.values() for p in b.ports}

    async def snapshot(self) -> OvsState:
        self._up()
        return OvsState(tuple(sorted(self.bridges.values(), key=lambda b: b.name)), "3.1.0",
                        ("netdev", "system"))

    async def add_bridge(self, name: str, datapath_type: str,
                         external_ids: Mapping[str, str]) -> OvsBridge:
        self._up()
        self.calls.append(f"add_bridge {name}")
        if name in self.bridges or name in self._names():
            raise OvsError(Reason.CONFLICT, f"constraint violation: {name} exists")
        return self.put_bridge(name, owner=external_ids, datapath_type=datapath_type)

    async def delete_bridge(self, uuid: str, external_ids: Mapping[str, str]) -> None:
        self._up()
        self.calls.append(f"delete_bridge {uuid}")
        br = next((b for b in self.bridges.values() if b.uuid == uuid), None)
        if br is None:
            raise OvsError(Reason.NOT_FOUND, f"Bridge row {uuid} is gone")
        if any(br.external_ids.get(k) != v for k, v in external_ids.items()):
            raise OvsError(Reason.CHANGED, f"{br.name} no longer carries {dict(external_ids)}")
        del self.bridges[br.name]

    async def add_port(self, bridge_uuid: str, name: str, vlan: Vlan,
                       external_ids: Mapping[str, str]) -> OvsPort:
        self._up()
        self.calls.append(f"add_port {name}")
        br = next((b for b in self.bridges.values() if b.uuid == bridge_uuid), None)
        if br is None:
            raise OvsError(Reason.NOT_FOUND, f"Bridge row {bridge_uuid} is gone")
        if name in self._names() or name in self.bridges:
            raise OvsError(Reason.CONFLICT, f"constraint violation: {name} exists")
        return self.put_port(br.name, name, owner=external_ids, vlan=vlan)

    def _find_port(self, uuid: str) -> tuple[OvsBridge, OvsPort]:
        for br in self.bridges.values():
            for p in br.ports:
                if p.uuid == uuid:
                    return br, p
        raise OvsError(Reason.NOT_FOUND, f"Port row {uuid} is gone")

    async def set_port_vlan(self, uuid: str, vlan: Vlan) -> OvsPort:
        self._up()
        self.calls.append(f"set_port_vlan {uuid}")
        br, port = self._find_port(uuid)
        new = replace(port, vlan=vlan)
        self.bridges[br.name] = replace(br, ports=tuple(new if p.uuid == uuid else p
                                                        for p in br.ports))
        return new

    async def delete_port(self, uuid: str, external_ids: Mapping[str, str]) -> None:
        self._up()
        self.calls.append(f"delete_port {uuid}")
        br, port = self._find_port(uuid)
        if any(port.external_ids.get(k) != v for k, v in external_ids.items()):
            raise OvsError(Reason.CHANGED, f"{port.name} no longer carries {dict(external_ids)}")
        self.bridges[br.name] = replace(br, ports=tuple(p for p in br.ports if p.uuid != uuid))


def _satisfies_protocol(fake: FakeOvs) -> OvsBackend:
    return fake  # mypy checks FakeOvs against the Protocol here
