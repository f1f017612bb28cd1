"""OverlayBackend on the real kernel: raw rtnetlink on the namespace worker thread.

One blocking socket, opened inside the target namespace on first use and used
only from the worker thread, so requests never interleave and the event loop
never waits on the kernel.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Sequence
from typing import TypeVar

from vnetd import failpoints
from vnetd.contract.errors import Unavailable, Unsupported, VnetdError
from vnetd.net import overlay_wire as w
from vnetd.net import rtnl
from vnetd.net.netns import NamespaceWorker
from vnetd.net.overlay import (
    FdbEntry,
    FdbOp,
    NeighEntry,
    NeighOp,
    OpError,
    VxlanInfo,
    VxlanSpec,
)

T = TypeVar("T")
DUMP_RETRIES = 5
ErrorFromErrno = Callable[[int, str], VnetdError]


class VxlanNetlink:
    def __init__(self, worker: NamespaceWorker, error_from_errno: ErrorFromErrno) -> None:
        # The errno mapping is the link backend's, given in, so both name errors alike.
        self._worker = worker
        self._error = error_from_errno
        self._wire: w.Wire | None = None

    def _socket(self) -> w.Wire:
        if self._wire is None:
            self._wire = w.Wire.open()
        return self._wire

    async def _run(self, what: str, fn: Callable[[w.Wire], T]) -> T:
        def job() -> T:
            return fn(self._socket())
        try:
            return await self._worker.run(job)
        except w.WireError as exc:
            raise self._error(exc.code, what) from exc
        except OSError as exc:
            raise self._error(exc.errno or errno.EIO, what) from exc

    async def _dump(self, what: str, kind: int, body: bytes) -> list[tuple[int, bytes]]:
        for _ in range(DUMP_RETRIES):
            try:
                return await self._run(what, lambda s: s.dump(kind, body))
            except w.DumpInterrupted:
                continue
        raise Unavailable(f"{what}: the table kept changing during the dump")

    async def add_vxlan(self, spec: VxlanSpec) -> None:
        body = w.vxlan_create_body(spec)
        try:
            await self._run(f"create vxlan {spec.name}", lambda s: s.request(
                rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, body))
            failpoints.hit("after_create", "vxlan")
        except Unsupported as exc:
            raise Unsupported(
                f"vxlan {spec.name}: this kernel has no VXLAN support (CONFIG_VXLAN, module "
                "vxlan): it refused the device kind", name=spec.name, feature="vxlan",
                **exc.details) from exc

    async def vxlan_info(self, index: int) -> VxlanInfo | None:
        payload = await self._run(f"get link #{index}",
                                  lambda s: s.get(rtnl.RTM_GETLINK, w.link_get_body(index)))
        return None if payload is None else w.parse_vxlan(payload)

    async def local_addresses(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for mtype, payload in await self._dump("dump addresses", rtnl.RTM_GETADDR,
                                               w.addr_dump_body()):
            if mtype == rtnl.RTM_NEWADDR:
                index, address = w.parse_addr(payload)
                if address is not None:
                    found.setdefault(address, index)
        return found

    async def fdb_entries(self, index: int) -> list[FdbEntry]:
        answers = await self._dump(f"dump fdb of #{index}", rtnl.RTM_GETNEIGH,
                                   w.fdb_dump_body(index))
        return w.fdb_rows(answers, index)

    async def neigh_entries(self, index: int) -> list[NeighEntry]:
        answers = await self._dump(f"dump neighbours of #{index}", rtnl.RTM_GETNEIGH,
                                   w.neigh_dump_body(index))
        return w.neigh_rows(answers, index)

    async def apply(self, index: int, fdb: Sequence[FdbOp],
                    neigh: Sequence[NeighOp]) -> list[OpError]:
        ops: list[FdbOp | NeighOp] = [*fdb, *neigh]
        requests = [w.fdb_request(index, op) for op in fdb]
        requests += [w.neigh_request(index, op) for op in neigh]
        if not requests:
            return []
        codes = await self._run(f"fdb/neighbour changes on #{index}",
                                lambda s: s.batch(requests))
        return [OpError(op, code, self._error(code, _describe(op)))
                for op, code in zip(ops, codes, strict=True) if code]

    def close(self) -> None:
        if self._wire is not None:
            self._wire.close()
            self._wire = None


def _describe(op: FdbOp | NeighOp) -> str:
    if isinstance(op, FdbOp):
        return f"fdb {op.action} {op.mac} dst {op.dst}"
    return f"neighbour {op.action} {op.ip} lladdr {op.mac}"


def open_neigh_monitor(netns: str | None) -> socket.socket:
    """The FDB/neighbour notification socket of `netns` (opened on a short-lived thread
    inside it)."""
    worker = NamespaceWorker(netns)
    try:
        return worker.call(w.open_neigh_monitor)
    finally:
        worker.close()
