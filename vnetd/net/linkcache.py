"""The event monitor's link decoder: `rtnl.decode_link` at a fraction of its cost, for
the stream of notifications about the same links.

An RTM_NEWLINK carries about forty top-level attributes; walking them in Python was
most of the daemon's CPU per event (about 25 of 60 us here). The kernel builds every
notification of a link the same way, so the attributes sit at the same offsets as in
its previous one whenever every attribute has the same length. A `Layout` remembers
those offsets for one (ifindex, message length): one precompiled struct unpacks every
attribute header of a new message in C, and only if they all equal the remembered
ones (then a walk would find exactly the same attributes, so this is the same
decode, not a guess) a second struct takes the wanted payloads. Unchanged payloads
are not decoded again (the link kind and its tun/bridge data, names, MAC address and
alias are kept by their bytes), and a notification that repeats the last state of
its link returns the same `Link`. Anything else (a first message, a new layout, a
truncated message) is decoded by `rtnl.decode_link` and teaches a layout for the next.

tests/unit/test_linkcache.py checks it against `rtnl.decode_link` message by message.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

from vnetd.net import rtnl
from vnetd.net.model import BridgeSettings, Link, TunSettings

# The attributes `rtnl.decode_link` reads, in the order of `Layout.values`.
FIELDS = (rtnl.IFLA_IFNAME, rtnl.IFLA_MTU, rtnl.IFLA_ADDRESS, rtnl.IFLA_OPERSTATE,
          rtnl.IFLA_CARRIER, rtnl.IFLA_MASTER, rtnl.IFLA_IFALIAS, rtnl.IFLA_LINKINFO,
          rtnl.IFLA_CARRIER_CHANGES, rtnl.IFLA_GROUP)
MAX_LAYOUTS = 1 << 16
"""Layouts kept before the cache starts over (links come and go; this bounds memory)."""
MAX_VALUES = 1 << 14
"""Decoded payloads (names, MACs, link info) kept before that cache starts over."""
_U32 = struct.Struct("=I")
_IFINFOMSG = rtnl.IFINFOMSG


class Layout:
    """Where the attributes of one kind of notification of one link are."""

    __slots__ = ("headers", "heads", "last", "values", "wanted")

    def __init__(self, heads: struct.Struct, headers: tuple[int, ...],
                 values: struct.Struct, wanted: tuple[int, ...]) -> None:
        self.heads = heads
        """Unpacks every top-level attribute header (length, type) from the message start."""
        self.headers = headers
        self.values = values
        """Unpacks the payloads of the wanted attributes present, in FIELDS order."""
        self.wanted = wanted
        """Index in FIELDS of each value `values` unpacks."""
        self.last: tuple[tuple[Any, ...], int, Link] | None = None
        """The last (payloads, flags, Link) decoded with this layout."""


@lru_cache(maxsize=4096)
def _compiled(fmt: str) -> struct.Struct:
    """One Struct per format: links of one kind whose attributes have the same lengths
    (most of them) share it. A Struct of ~40 fields is a few KiB, one per link would
    be tens of MB at 10,000 links."""
    return struct.Struct(fmt)


@lru_cache(maxsize=4096)
def _shared(values: tuple[int, ...]) -> tuple[int, ...]:
    """The first equal tuple seen (headers and wanted indexes are shared like Structs)."""
    return values


def _learn(buf: rtnl.Buffer, start: int, end: int) -> Layout | None:
    """The layout of the message at buf[start:end] (start: its nlmsghdr); None when its
    attributes do not tile it exactly (truncated or odd: left to the plain walker)."""
    first = start + rtnl.NLMSGHDR.size + _IFINFOMSG.size
    heads_fmt = [f"={first - start}x"]
    headers: list[int] = []
    found: dict[int, tuple[int, int]] = {}  # type -> (payload offset, length); last wins
    pos, cur = first, first
    while pos + 4 <= end:
        length, kind = rtnl.NLATTR.unpack_from(buf, pos)
        if length < 4 or pos + length > end:
            return None
        if pos > cur:
            heads_fmt.append(f"{pos - cur}x")
        heads_fmt.append("HH")
        headers += (length, kind)
        cur = pos + 4
        kind &= rtnl.NLA_TYPE_MASK
        if kind in FIELDS:
            found[kind] = (pos + 4 - start, length - 4)
        pos += (length + 3) & ~3
    present = sorted((found[kind][0], found[kind][1], FIELDS.index(kind))
                     for kind in found)
    values_fmt = ["="]
    cur = 0
    for offset, length, _ in present:
        if offset > cur:
            values_fmt.append(f"{offset - cur}x")
        values_fmt.append(f"{length}s")
        cur = offset + length
    return Layout(_compiled("".join(heads_fmt)), _shared(tuple(headers)),
                  _compiled("".join(values_fmt)), _shared(tuple(i for _, _, i in present)))


class LinkDecoder:
    """Decodes RTM_NEWLINK / RTM_DELLINK bodies like `rtnl.decode_link`, remembering
    layouts and decoded payloads (see the module's docstring). One per socket."""

    def __init__(self) -> None:
        self._layouts: dict[tuple[int, int], Layout | None] = {}
        self._strings: dict[bytes, str | None] = {}
        self._macs: dict[bytes, str | None] = {}
        self._infos: dict[bytes, tuple[str, BridgeSettings | None, TunSettings | None]] = {}
        self.hits = 0
        """Messages decoded through a layout (the rest went through rtnl.decode_link)."""

    def decode(self, buf: rtnl.Buffer, start: int, end: int) -> Link:
        """The Link of the message at buf[start:end] (start: its nlmsghdr)."""
        body = start + rtnl.NLMSGHDR.size
        _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(buf, body)
        key = (index, end - start)
        layouts = self._layouts
        layout = layouts.get(key)
        if layout is not None and layout.heads.unpack_from(buf, start) == layout.headers:
            self.hits += 1
            payloads = layout.values.unpack_from(buf, start)
            last = layout.last
            if last is not None and last[0] == payloads and last[1] == flags:
                return last[2]
            link = self._build(index, flags, payloads, layout.wanted)
            layout.last = (payloads, flags, link)
            return link
        if layout is not None or key not in layouts:  # new, or the link changed its layout
            if len(layouts) >= MAX_LAYOUTS:
                layouts.clear()
            layouts[key] = _learn(buf, start, end)
        return rtnl.decode_link(buf, body, end)

    def _build(self, index: int, flags: int, payloads: tuple[Any, ...],
               wanted: tuple[int, ...]) -> Link:
        v: list[bytes | None] = [None] * len(FIELDS)
        for i, raw in zip(wanted, payloads, strict=True):
            v[i] = raw
        name = self._string(v[0]) or ""
        kind, bridge, tun = ("device", None, None) if v[7] is None else self._info(v[7])
        if kind == "device" and name == "lo":
            kind = "loopback"
        oper = v[3][0] if v[3] else None
        return Link(
            index=index,
            name=name,
            kind=kind,
            mtu=_u32(v[1]) or 0,
            mac=self._mac(v[2]),
            up=bool(flags & rtnl.IFF_UP),
            oper_state=(rtnl.OPERSTATES[oper] if oper is not None and oper < len(rtnl.OPERSTATES)
                        else "unknown"),
            carrier=bool(v[4][0]) if v[4] else False,
            master=_u32(v[5]) or None,
            alias=self._string(v[6]) or None,
            bridge=bridge,
            tun=tun,
            carrier_changes=_u32(v[8]) or 0,
            group=_u32(v[9]) or 0,
        )

    def _string(self, raw: bytes | None) -> str | None:
        if raw is None:
            return None
        try:
            return self._strings[raw]
        except KeyError:
            if len(self._strings) >= MAX_VALUES:
                self._strings.clear()
            value = self._strings[raw] = rtnl.get_str(memoryview(raw))
            return value

    def _mac(self, raw: bytes | None) -> str | None:
        if raw is None:
            return None
        try:
            return self._macs[raw]
        except KeyError:
            if len(self._macs) >= MAX_VALUES:
                self._macs.clear()
            value = self._macs[raw] = rtnl.get_mac(memoryview(raw))
            return value

    def _info(self, raw: bytes) -> tuple[str, BridgeSettings | None, TunSettings | None]:
        try:
            return self._infos[raw]
        except KeyError:
            pass
        # What rtnl.decode_link does with IFLA_LINKINFO, once per distinct payload.
        inner = rtnl.nested(memoryview(raw))
        kind = rtnl.get_str(inner.get(rtnl.IFLA_INFO_KIND)) or "device"
        bridge = tun = None
        data = inner.get(rtnl.IFLA_INFO_DATA)
        if data is not None:
            if kind == "bridge":
                bridge = rtnl._bridge(rtnl.nested(data))
            elif kind == "tun":
                tun = rtnl._tun(rtnl.nested(data))
                kind = tun.mode
        if len(self._infos) >= MAX_VALUES:
            self._infos.clear()
        value = self._infos[raw] = (kind, bridge, tun)
        return value


def _u32(raw: bytes | None) -> int | None:
    return None if raw is None or len(raw) < 4 else int(_U32.unpack_from(raw)[0])
