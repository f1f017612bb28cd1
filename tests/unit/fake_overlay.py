"""An in-memory fake of the OverlayBackend Protocol, with the kernel's FDB rules.

The rules kept: one entry per MAC with one or more remotes (rows); NLM_F_EXCL
on a taken MAC is EEXIST; a replace moves the first row and keeps the entry's
flags (the kernel does not update them); an append to an existing MAC keeps
that MAC's flags; deleting a missing row is ENOENT. Calls are logged in the
FakeNet's call list, so "nothing changed" is checked the same way.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.unit.fakes import Call, FakeLink, FakeNet
from vnetd.contract.errors import Conflict, NotFound, Unsupported, VnetdError
from vnetd.net.model import CREATING_GROUP
from vnetd.net.overlay import (
    NTF_EXT_LEARNED,
    NTF_SELF,
    NUD_PERMANENT,
    ZERO_MAC,
    FdbEntry,
    FdbOp,
    NeighEntry,
    NeighOp,
    OpError,
    OverlayBackend,
    VxlanInfo,
    VxlanSpec,
)


def _error(code: int, what: str) -> VnetdError:
    if code == errno.EEXIST:
        return Conflict(f"{what}: File exists", errno=code)
    return NotFound(f"{what}: No such file or directory", errno=code)


@dataclass
class FakeOverlay:
    net: FakeNet
    supported: bool = True
    infos: dict[int, VxlanInfo] = field(default_factory=dict)
    fdb: dict[int, list[FdbEntry]] = field(default_factory=dict)
    neigh: dict[int, list[NeighEntry]] = field(default_factory=dict)
    addresses: dict[str, int] = field(default_factory=dict)

    # -- test set-up (not logged) -------------------------------------------------
    def add_vxlan_link(self, name: str, vni: int, local: str, *, owned: bool = True,
                       master: str | None = None, mtu: int = 1450) -> int:
        index = self.net.add(name, "vxlan", owned=owned, master=master, mtu=mtu)
        self.infos[index] = VxlanInfo(vni=vni, local=local, link=None, port=4789,
                                      learning=False, proxy=False, ttl=0, tos=0)
        return index

    def forget(self, index: int) -> None:
        self.infos.pop(index, None)
        self.fdb.pop(index, None)
        self.neigh.pop(index, None)

    # -- the OverlayBackend Protocol ----------------------------------------------
    async def add_vxlan(self, spec: VxlanSpec) -> None:
        await self.net._io(_call("add_vxlan", spec))
        if not self.supported:
            raise Unsupported(f"vxlan {spec.name}: this kernel has no VXLAN support "
                              "(CONFIG_VXLAN, module vxlan): it refused the device kind",
                              name=spec.name, feature="vxlan", errno=errno.EOPNOTSUPP)
        self.net._require_free(spec.name)
        index = self.net._new_index()
        # Born unmarked in CREATING_GROUP, as overlay_wire.vxlan_create_body asks.
        self.net.links[index] = FakeLink(index=index, name=spec.name, kind="vxlan",
                                         mtu=spec.mtu or 1450, mac=self.net._mac(index),
                                         group=CREATING_GROUP)
        self.infos[index] = VxlanInfo(vni=spec.vni, local=spec.local, link=spec.link,
                                      port=spec.port, learning=spec.learning,
                                      proxy=spec.proxy, ttl=spec.ttl, tos=spec.tos)

    async def vxlan_info(self, index: int) -> VxlanInfo | None:
        await self.net._io(_call("vxlan_info", index))
        return self.infos.get(index)

    async def local_addresses(self) -> dict[str, int]:
        await self.net._io(_call("local_addresses"))
        return dict(self.addresses)

    async def fdb_entries(self, index: int) -> list[FdbEntry]:
        await self.net._io(_call("fdb_entries", index))
        return list(self.fdb.get(index, []))

    async def neigh_entries(self, index: int) -> list[NeighEntry]:
        await self.net._io(_call("neigh_entries", index))
        return list(self.neigh.get(index, []))

    async def apply(self, index: int, fdb: Sequence[FdbOp],
                    neigh: Sequence[NeighOp]) -> list[OpError]:
        await self.net._io(_call("apply", index, tuple(fdb), tuple(neigh)))
        errors: list[OpError] = []
        for op in fdb:
            code = self._fdb(self.fdb.setdefault(index, []), op)
            if code:
                errors.append(OpError(op, code, _error(code, f"fdb {op.action} {op.mac}")))
        for n in neigh:
            code = self._neigh(self.neigh.setdefault(index, []), n)
            if code:
                errors.append(OpError(n, code, _error(code, f"neighbour {n.action} {n.ip}")))
        return errors

    @staticmethod
    def _fdb(rows: list[FdbEntry], op: FdbOp) -> int:
        same_mac = [r for r in rows if r.mac == op.mac]
        row = next((r for r in same_mac if r.dst == op.dst), None)
        ours = NTF_SELF if op.mac == ZERO_MAC else NTF_SELF | NTF_EXT_LEARNED
        if op.action == "delete":
            if row is None:
                return errno.ENOENT
            rows.remove(row)
        elif op.action == "add":
            if same_mac:
                return errno.EEXIST
            rows.append(FdbEntry(op.mac, op.dst, NUD_PERMANENT, ours))
        elif op.action == "append":
            if row is not None:
                return errno.EEXIST
            flags = same_mac[0].flags if same_mac else NTF_SELF
            rows.append(FdbEntry(op.mac, op.dst, NUD_PERMANENT, flags))
        elif same_mac:  # replace: the first row moves, the entry keeps its flags
            first = same_mac[0]
            rows[rows.index(first)] = FdbEntry(op.mac, op.dst, NUD_PERMANENT, first.flags)
        else:
            rows.append(FdbEntry(op.mac, op.dst, NUD_PERMANENT, ours))
        return 0

    @staticmethod
    def _neigh(rows: list[NeighEntry], op: NeighOp) -> int:
        row = next((r for r in rows if r.ip == op.ip), None)
        if op.action == "delete":
            if row is None:
                return errno.ENOENT
            rows.remove(row)
            return 0
        if row is not None and op.action == "add":
            return errno.EEXIST
        if row is not None:
            rows.remove(row)
        rows.append(NeighEntry(op.ip, op.mac, NUD_PERMANENT, NTF_EXT_LEARNED))
        return 0


def _call(method: str, *args: object) -> Call:
    return Call(method, args)


def _satisfies_protocol(o: FakeOverlay) -> OverlayBackend:
    return o  # mypy checks that FakeOverlay is an OverlayBackend


