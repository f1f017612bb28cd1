"""The full-state planner: every combination of current and wanted rows, on the fake's kernel rules.

For each table the invariant is the same: after the plan is applied, the rows
vnetd owns are exactly the wanted ones (minus conflicts), every foreign row is
unchanged, a second plan is empty, and a conflict is reported exactly when a
foreign row holds a wanted key.
"""

from __future__ import annotations

import itertools
import random

import pytest

from tests.unit.fake_overlay import FakeOverlay
from vnetd.handlers.fdb_plan import plan
from vnetd.net.overlay import (
    NTF_EXT_LEARNED,
    NTF_SELF,
    NUD_PERMANENT,
    ZERO_MAC,
    FdbEntry,
    NeighEntry,
)

REACHABLE = 0x02
MAC = "52:54:00:00:00:01"
A, B, C = "198.51.100.1", "198.51.100.2", "198.51.100.3"
OWNED = NTF_SELF | NTF_EXT_LEARNED


def owned(mac: str, dst: str) -> FdbEntry:
    return FdbEntry(mac, dst, NUD_PERMANENT, NTF_SELF if mac == ZERO_MAC else OWNED)


def hand_made(mac: str, dst: str) -> FdbEntry:
    """`bridge fdb add MAC dev vx dst IP` typed by someone: permanent, no extern_learn."""
    return FdbEntry(mac, dst, NUD_PERMANENT, NTF_SELF)


def learned(mac: str, dst: str) -> FdbEntry:
    return FdbEntry(mac, dst, REACHABLE, NTF_SELF)


def apply_fdb(rows: list[FdbEntry], ops: list) -> list[FdbEntry]:  # type: ignore[type-arg]
    rows = list(rows)
    for op in ops:
        assert FakeOverlay._fdb(rows, op) == 0, op
    return rows


def apply_neigh(rows: list[NeighEntry], ops: list) -> list[NeighEntry]:  # type: ignore[type-arg]
    rows = list(rows)
    for op in ops:
        assert FakeOverlay._neigh(rows, op) == 0, op
    return rows


# ---------------------------------------------------------------- unicast, one MAC
UNICAST_CURRENT = {
    "absent": [],
    "owned A": [owned(MAC, A)],
    "owned B": [owned(MAC, B)],
    "owned A+B": [owned(MAC, A), owned(MAC, B)],
    "owned B+C": [owned(MAC, B), owned(MAC, C)],
    "hand-made A": [hand_made(MAC, A)],
    "hand-made B": [hand_made(MAC, B)],
    "learned B": [learned(MAC, B)],
}
UNICAST_WANTED: dict[str, dict[str, str] | None] = {
    "unmanaged": None, "nothing": {}, "A": {MAC: A}}


@pytest.mark.parametrize(("current_name", "wanted_name"),
                         list(itertools.product(UNICAST_CURRENT, UNICAST_WANTED)))
def test_unicast_every_combination(current_name: str, wanted_name: str) -> None:
    current = UNICAST_CURRENT[current_name]
    wanted = UNICAST_WANTED[wanted_name]
    p = plan(current, [], wanted)
    after = apply_fdb(current, p.fdb)
    foreign_before = [r for r in current if not r.owned]
    assert [r for r in after if not r.owned] == foreign_before  # foreign rows untouched
    ours = {(r.mac, r.dst) for r in after if r.owned}
    if wanted is None:
        assert p.fdb == [] and ours == {(r.mac, r.dst) for r in current if r.owned}
    elif foreign_before and wanted:
        assert [c.key for c in p.conflicts] == [MAC]
        assert ours == set()
    else:
        assert p.conflicts == []
        assert ours == set(wanted.items())
    assert plan(after, [], wanted).fdb == []  # converged: a re-send changes nothing


def test_moving_mac_is_one_replace_without_a_gap() -> None:
    p = plan([owned(MAC, A)], [], {MAC: B})
    assert [(op.action, op.dst) for op in p.fdb] == [("replace", B)]


def test_moving_mac_with_two_rows_deletes_the_extra_first() -> None:
    p = plan([owned(MAC, A), owned(MAC, B)], [], {MAC: C})
    assert [(op.action, op.dst) for op in p.fdb] == [("delete", B), ("replace", C)]


# ---------------------------------------------------------------- the flood list
REMOTE_SETS = [[], [A], [B], [A, B], [A, B, C]]


@pytest.mark.parametrize(("have", "want"), list(itertools.product(REMOTE_SETS, REMOTE_SETS)))
def test_remotes_every_combination(have: list[str], want: list[str]) -> None:
    others = [owned(MAC, A), hand_made("52:54:00:00:00:09", C)]
    current = [owned(ZERO_MAC, d) for d in have] + others
    p = plan(current, want)
    after = apply_fdb(current, p.fdb)
    assert sorted(r.dst for r in after if r.flood) == sorted(want)
    assert [r for r in after if not r.flood] == current[len(have):]  # unicast rows untouched
    appends = [op for op in p.fdb if op.action == "append"]
    deletes = [op for op in p.fdb if op.action == "delete"]
    assert {op.dst for op in appends} == set(want) - set(have)
    assert {op.dst for op in deletes} == set(have) - set(want)
    if appends and deletes:  # new remotes before old ones go: no narrower flooding
        assert p.fdb.index(appends[-1]) < p.fdb.index(deletes[0])
    assert plan(after, want).fdb == []


def test_non_permanent_flood_row_is_foreign() -> None:
    row = FdbEntry(ZERO_MAC, A, REACHABLE, NTF_SELF)
    assert not row.owned
    assert plan([row], []).fdb == []


# ---------------------------------------------------------------- neighbours, one IP
IP = "10.0.0.5"
M1, M2 = "52:54:00:00:00:01", "52:54:00:00:00:02"
NEIGH_CURRENT = {
    "absent": [],
    "owned M1": [NeighEntry(IP, M1, NUD_PERMANENT, NTF_EXT_LEARNED)],
    "owned M2": [NeighEntry(IP, M2, NUD_PERMANENT, NTF_EXT_LEARNED)],
    "hand-made M1": [NeighEntry(IP, M1, NUD_PERMANENT, 0)],
    "resolved M2": [NeighEntry(IP, M2, REACHABLE, 0)],
    "learned-flag but stale": [NeighEntry(IP, M2, 0x04, NTF_EXT_LEARNED)],
}
NEIGH_WANTED: dict[str, dict[str, str] | None] = {"unmanaged": None, "nothing": {}, "M1": {IP: M1}}


@pytest.mark.parametrize(("current_name", "wanted_name"),
                         list(itertools.product(NEIGH_CURRENT, NEIGH_WANTED)))
def test_neighbours_every_combination(current_name: str, wanted_name: str) -> None:
    current = NEIGH_CURRENT[current_name]
    wanted = NEIGH_WANTED[wanted_name]
    p = plan([], [], None, current, wanted)
    after = apply_neigh(current, p.neigh)
    foreign = [r for r in current if not r.owned]
    assert [r for r in after if not r.owned] == foreign
    ours = {(r.ip, r.mac) for r in after if r.owned}
    if wanted is None:
        assert p.neigh == [] and ours == {(r.ip, r.mac) for r in current if r.owned}
    elif foreign and wanted:
        assert [c.key for c in p.conflicts] == [IP] and ours == set()
    else:
        assert ours == set(wanted.items()) and p.conflicts == []
    assert plan([], [], None, after, wanted).neigh == []


# ---------------------------------------------------------------- many keys at once
@pytest.mark.parametrize("seed", range(200))
def test_random_tables_converge_and_leave_foreign_rows(seed: int) -> None:
    rng = random.Random(seed)
    macs = [f"52:54:00:00:01:{i:02x}" for i in range(6)]
    dsts = [f"198.51.100.{i}" for i in range(1, 5)]
    current: list[FdbEntry] = [owned(ZERO_MAC, d) for d in dsts if rng.random() < 0.5]
    for mac in macs:
        kind = rng.choice(["none", "owned", "owned2", "hand", "learned"])
        pick = rng.sample(dsts, 2)
        if kind == "owned":
            current.append(owned(mac, pick[0]))
        elif kind == "owned2":
            current += [owned(mac, pick[0]), owned(mac, pick[1])]
        elif kind == "hand":
            current.append(hand_made(mac, pick[0]))
        elif kind == "learned":
            current.append(learned(mac, pick[0]))
    rng.shuffle(current)
    remotes = [d for d in dsts if rng.random() < 0.5]
    unicast = {m: rng.choice(dsts) for m in macs if rng.random() < 0.6}
    p = plan(current, remotes, unicast)
    after = apply_fdb(current, p.fdb)
    assert sorted(map(repr, (r for r in after if not r.owned))) == \
        sorted(map(repr, (r for r in current if not r.owned)))
    conflicted = {c.key for c in p.conflicts}
    assert conflicted == {m for m in unicast if any(r.mac == m and not r.owned for r in current)}
    assert {(r.mac, r.dst) for r in after if r.owned and not r.flood} == \
        {(m, d) for m, d in unicast.items() if m not in conflicted}
    assert sorted(r.dst or "" for r in after if r.flood) == sorted(remotes)
    assert plan(after, remotes, unicast).fdb == []


def test_counts() -> None:
    p = plan([owned(ZERO_MAC, A), owned(MAC, A)], [B], {}, [], {IP: M1})
    assert p.counts() == {"added": {"remotes": 1, "fdb": 0, "neighbours": 1},
                          "removed": {"remotes": 1, "fdb": 1, "neighbours": 0}}
