"""Full-state convergence of a VXLAN device's FDB and neighbour table, as a pure function.

`plan(current, wanted)` says which requests turn the kernel's rows into the
wanted state: it adds what is missing, removes rows vnetd owns that are no
longer wanted, and never touches a row vnetd does not own (see
vnetd.net.overlay for the marker); a wanted key held by a foreign row is
reported as a conflict and left alone.

Order of the requests (they go to the kernel in one batch, in this order):
1. extra owned rows of a unicast MAC that moves (so the replace that follows
   moves the only row left),
2. adds, appends and replaces (new remotes first: a segment never floods to
   fewer VTEPs than both the old and the new lists have in common),
3. removals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vnetd.net.overlay import ZERO_MAC, FdbEntry, FdbOp, NeighEntry, NeighOp


@dataclass(frozen=True)
class Conflict:
    """A wanted entry whose key (MAC or IP) a foreign row holds: left as it is."""

    table: str
    key: str
    wanted: str
    current: str | None


@dataclass
class Plan:
    fdb: list[FdbOp] = field(default_factory=list)
    neigh: list[NeighOp] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        added = {"remotes": 0, "fdb": 0, "neighbours": 0}
        removed = dict(added)
        for op in self.fdb:
            table = "remotes" if op.mac == ZERO_MAC else "fdb"
            target = removed if op.action == "delete" else added
            target[table] += 1
        for n in self.neigh:
            (removed if n.action == "delete" else added)["neighbours"] += 1
        return {"added": added, "removed": removed}


def plan_remotes(current: Iterable[FdbEntry], wanted: Iterable[str]) -> list[FdbOp]:
    """The flood list: one all-zero MAC row per remote VTEP."""
    have = {e.dst for e in current if e.flood and e.owned and e.dst is not None}
    want = list(dict.fromkeys(wanted))
    ops = [FdbOp("append", ZERO_MAC, dst) for dst in want if dst not in have]
    wanted_set = set(want)
    ops += [FdbOp("delete", ZERO_MAC, dst) for dst in sorted(have - wanted_set)]
    return ops


def plan_unicast(current: Iterable[FdbEntry], wanted: Mapping[str, str],
                 conflicts: list[Conflict]) -> tuple[list[FdbOp], list[FdbOp], list[FdbOp]]:
    """(first, changes, removals) for the unicast rows (see the module's order)."""
    owned: dict[str, list[str]] = {}
    foreign: dict[str, str | None] = {}
    for e in current:
        if e.flood:
            continue
        if e.owned and e.dst is not None:
            owned.setdefault(e.mac, []).append(e.dst)
        else:
            foreign.setdefault(e.mac, e.dst)
    first: list[FdbOp] = []
    changes: list[FdbOp] = []
    removals: list[FdbOp] = []
    for mac, dst in wanted.items():
        dsts = owned.get(mac, [])
        if mac in foreign:
            # The kernel keeps one entry per MAC: a foreign row (hand-made, learned)
            # holds it, so vnetd's would replace someone else's. Never.
            conflicts.append(Conflict("fdb", mac, dst, foreign[mac]))
            removals += [FdbOp("delete", mac, d) for d in dsts]
        elif not dsts:
            changes.append(FdbOp("add", mac, dst))
        elif dst in dsts:
            removals += [FdbOp("delete", mac, d) for d in dsts if d != dst]
        else:
            first += [FdbOp("delete", mac, d) for d in dsts[1:]]
            changes.append(FdbOp("replace", mac, dst))
    for mac in sorted(owned.keys() - wanted.keys()):
        removals += [FdbOp("delete", mac, d) for d in owned[mac]]
    return first, changes, removals


def plan_neighbours(current: Iterable[NeighEntry], wanted: Mapping[str, str],
                    conflicts: list[Conflict]) -> list[NeighOp]:
    owned: dict[str, str | None] = {}
    foreign: dict[str, str | None] = {}
    for e in current:
        (owned if e.owned else foreign)[e.ip] = e.mac
    changes: list[NeighOp] = []
    for ip, mac in wanted.items():
        if ip in foreign:
            conflicts.append(Conflict("neighbours", ip, mac, foreign[ip]))
        elif ip not in owned:
            changes.append(NeighOp("add", ip, mac))
        elif owned[ip] != mac:
            changes.append(NeighOp("replace", ip, mac))
    removals = [NeighOp("delete", ip, mac or ZERO_MAC)
                for ip, mac in sorted(owned.items()) if ip not in wanted]
    return changes + removals


def plan(current_fdb: Iterable[FdbEntry], remotes: Iterable[str],
         unicast: Mapping[str, str] | None = None,
         current_neigh: Iterable[NeighEntry] = (),
         neighbours: Mapping[str, str] | None = None) -> Plan:
    """Requests that make the device's tables exactly the wanted ones.

    `unicast` or `neighbours` None: that table is not managed by this job (left
    as it is); an empty mapping removes every row vnetd owns in it.
    """
    rows = list(current_fdb)
    result = Plan()
    flood = plan_remotes(rows, remotes)
    first: list[FdbOp] = []
    changes: list[FdbOp] = []
    removals: list[FdbOp] = []
    if unicast is not None:
        first, changes, removals = plan_unicast(rows, unicast, result.conflicts)
    appends = [op for op in flood if op.action != "delete"]
    drops = [op for op in flood if op.action == "delete"]
    result.fdb = first + appends + changes + drops + removals
    if neighbours is not None:
        result.neigh = plan_neighbours(current_neigh, neighbours, result.conflicts)
    return result
