"""fdb.converge: a VXLAN device's flood list, unicast FDB and neighbours, as full state.

`bridge fdb append 00:00:00:00:00:00 dev VX dst IP` for every remote, `bridge
fdb add MAC dev VX dst IP` and `ip neigh add IP lladdr MAC dev VX` for the rest,
minus whatever vnetd wrote before that is no longer listed: one job, one batch
of requests to the kernel, idempotent.
"""

from __future__ import annotations

import errno
from typing import Any

from vnetd.contract.errors import Conflict, InvalidArgument
from vnetd.contract.overlay import FdbConverge, ip_of
from vnetd.handlers.context import Context
from vnetd.handlers.fdb_plan import plan
from vnetd.handlers.overlay_state import State
from vnetd.handlers.policy import require_kind, require_link
from vnetd.net.overlay import FdbOp, OpError


def ip_version(value: str) -> int:
    found = ip_of(value)
    return found[1] if found is not None else 0


def _check_addresses(cmd: FdbConverge, local: str | None) -> None:
    if local is None:
        return
    version = ip_version(local)
    for dst in set(cmd.remotes).union(e.dst for e in cmd.fdb or ()):
        if ip_version(dst) != version:
            raise InvalidArgument(f"{dst} is not an IPv{version} address like the device's "
                                  f"local address {local}", dst=dst, local=local)
        if dst == local:
            raise InvalidArgument(f"{dst} is this VTEP's own address, not a remote", dst=dst)


def _wanted_state(cmd: FdbConverge) -> tuple[State, set[str]]:
    state: State = {("remotes", dst): None for dst in cmd.remotes}
    tables = {"remotes"}
    if cmd.fdb is not None:
        state.update({("fdb", e.mac): e.dst for e in cmd.fdb})
        tables.add("fdb")
    if cmd.neighbours is not None:
        state.update({("neighbours", n.ip): n.mac for n in cmd.neighbours})
        tables.add("neighbours")
    return state, tables


def _sort_errors(errors: list[OpError]) -> list[dict[str, Any]]:
    """Raced changes become conflicts; anything else fails the job (a retry converges)."""
    raced: list[dict[str, Any]] = []
    for e in errors:
        op = e.op
        if op.action == "delete" and e.errno in (errno.ENOENT, errno.ENODEV):
            continue  # gone already: what was wanted
        if op.action == "add" and e.errno == errno.EEXIST:
            key = op.mac if isinstance(op, FdbOp) else op.ip
            wanted = op.dst if isinstance(op, FdbOp) else op.mac
            raced.append({"table": "fdb" if isinstance(op, FdbOp) else "neighbours",
                          "key": key, "wanted": wanted, "current": None})
            continue
        raise e.error
    return raced


async def converge(cmd: FdbConverge, ctx: Context) -> dict[str, Any]:
    link = require_link(await ctx.net.get_link(cmd.name), cmd.name, "vxlan device")
    require_kind(link, "vxlan")
    ctx.policy.require_owned(link, "change the forwarding table of")
    overlay = ctx.net.overlay()
    info = await overlay.vxlan_info(link.index)
    if info is None:
        raise Conflict(f"{cmd.name} is not a VXLAN device", name=cmd.name)
    _check_addresses(cmd, info.local)
    rows = await overlay.fdb_entries(link.index)
    neigh = await overlay.neigh_entries(link.index) if cmd.neighbours is not None else []
    p = plan(rows, cmd.remotes,
             None if cmd.fdb is None else {e.mac: e.dst for e in cmd.fdb},
             neigh,
             None if cmd.neighbours is None else {n.ip: n.mac for n in cmd.neighbours})
    state, tables = _wanted_state(cmd)
    # Recorded before the requests go out: the watcher sees their notifications as
    # expected, and only changes made by someone else as drift.
    ctx.overlay.set(link.index, link.name, state, tables)
    errors = await overlay.apply(link.index, p.fdb, p.neigh)
    conflicts = [{"table": c.table, "key": c.key, "wanted": c.wanted, "current": c.current}
                 for c in p.conflicts] + _sort_errors(errors)
    counts = p.counts()
    return {
        "name": cmd.name,
        "vni": info.vni,
        "remotes": len(cmd.remotes),
        "fdb": None if cmd.fdb is None else len(cmd.fdb),
        "neighbours": None if cmd.neighbours is None else len(cmd.neighbours),
        **counts,
        "conflicts": conflicts,
        "changed": bool(p.fdb or p.neigh),
    }


