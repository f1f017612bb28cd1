"""A reference control plane for one tenant segment across hosts, on the documented contract.

`ensure_segment` sends every host one `batch` job: `bridge.ensure`,
`vxlan.ensure` (attached to that bridge) and `fdb.converge` with the complete
state of the segment as that host sees it: every other host as a remote VTEP,
and, when guests are given, every other host's guest MACs (unicast FDB) and
their IPs (neighbour entries for ARP/ND suppression). All hosts in parallel.
Re-sending the same call repairs any drift; a host's result says what changed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from vnetd.client import CallTimeout, Reply


class Caller(Protocol):
    async def call(self, host_id: str, op: str, args: dict[str, Any] | None = None, *,
                   timeout: float = 30.0, message_id: str | None = None) -> Reply: ...


@dataclass(frozen=True)
class Guest:
    mac: str
    ip: str | None = None


@dataclass(frozen=True)
class Host:
    host_id: str
    local: str
    """The host's underlay address (its VTEP)."""
    dev: str | None = None
    guests: tuple[Guest, ...] = ()


@dataclass(frozen=True)
class Segment:
    vni: int
    bridge: str
    vxlan: str
    proxy: bool = False
    mtu: int | None = None
    dstport: int = 4789
    unicast: bool = True
    """Send the other hosts' guest MACs as unicast FDB entries (else: flood only)."""


@dataclass
class HostResult:
    host_id: str
    ok: bool
    seconds: float
    step: str | None = None
    """The op that failed (None when all succeeded, "call" for a timeout)."""
    error: dict[str, Any] | None = None
    created: bool = False
    remotes: int = 0
    added: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    conflicts: list[dict[str, Any]] = field(default_factory=list)


def segment_jobs(segment: Segment, hosts: Sequence[Host]) -> dict[str, list[dict[str, Any]]]:
    """The batch of each host: what it must hold for the segment, as full state."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for host in hosts:
        others = [h for h in hosts if h.host_id != host.host_id]
        bridge: dict[str, Any] = {"name": segment.bridge}
        vxlan: dict[str, Any] = {"name": segment.vxlan, "vni": segment.vni, "local": host.local,
                                 "bridge": segment.bridge, "proxy": segment.proxy,
                                 "dstport": segment.dstport}
        if host.dev is not None:
            vxlan["dev"] = host.dev
        if segment.mtu is not None:
            vxlan["mtu"] = segment.mtu
        fdb: dict[str, Any] = {"name": segment.vxlan, "remotes": [h.local for h in others]}
        if segment.unicast:
            fdb["fdb"] = [{"mac": g.mac, "dst": h.local} for h in others for g in h.guests]
        if segment.proxy:
            fdb["neighbours"] = [{"ip": g.ip, "mac": g.mac}
                                 for h in others for g in h.guests if g.ip is not None]
        jobs[host.host_id] = [{"op": "bridge.ensure", "args": bridge},
                              {"op": "vxlan.ensure", "args": vxlan},
                              {"op": "fdb.converge", "args": fdb}]
    return jobs


def _result(host_id: str, reply: Reply, commands: list[dict[str, Any]],
            seconds: float) -> HostResult:
    if not reply.ok:
        return HostResult(host_id, False, seconds, "batch", reply.error)
    results = reply.result.get("results", [])
    for command, one in zip(commands, results, strict=False):
        if not one.get("ok"):
            return HostResult(host_id, False, seconds, command["op"], one.get("error"))
    if len(results) < len(commands):
        return HostResult(host_id, False, seconds, "batch", {"message": "results missing"})
    vx, fdb = results[1]["result"], results[2]["result"]
    return HostResult(host_id, True, seconds, created=bool(vx.get("created")),
                      remotes=int(fdb.get("remotes", 0)), added=fdb.get("added", {}),
                      removed=fdb.get("removed", {}), conflicts=fdb.get("conflicts", []))


async def ensure_segment(client: Caller, segment: Segment, hosts: Sequence[Host], *,
                         timeout: float = 30.0,
                         on_done: Callable[[HostResult], None] | None = None
                         ) -> list[HostResult]:
    """Ensure `segment` on every host at once; one result per host, in `hosts` order."""
    if len({h.host_id for h in hosts}) != len(hosts):
        raise ValueError("host ids must be distinct")
    jobs = segment_jobs(segment, hosts)

    async def one(host: Host) -> HostResult:
        start = time.perf_counter()
        commands = jobs[host.host_id]
        try:
            reply = await client.call(host.host_id, "batch", {"commands": commands},
                                      timeout=timeout)
            result = _result(host.host_id, reply, commands, time.perf_counter() - start)
        except CallTimeout as exc:
            result = HostResult(host.host_id, False, time.perf_counter() - start, "call",
                                {"code": "timeout", "message": str(exc)})
        if on_done is not None:
            on_done(result)
        return result

    return list(await asyncio.gather(*(one(h) for h in hosts)))
