"""The event monitor's link decoder: `rtnl.decode_link` at a fraction of its cost, for
the stream of notifications about links.

An RTM_NEWLINK carries about forty top-level attributes; walking them in Python was
most of the daemon's CPU per event. The kernel builds every notification the same
way, so two messages of the same length whose attribute headers are all equal hold
the same attributes at the same offsets, whichever link they are about. A `Layout`
remembers those offsets for one shape of message: one precompiled struct unpacks
every attribute header of a new message in C, and only if they all equal the
remembered ones (then a walk would find exactly the same attributes, so this is the
same decode, not a guess) a second struct takes the wanted payloads. Layouts are
kept by message length and shared by all links: a TAP that was just created is
decoded through the layout its predecessors taught (keyed by link, each new link's
first few notifications were walked and learnt, at about 45 us each, for layouts
used once or never). Unchanged payloads are not decoded again (the link kind and
its tun/bridge data, names, MAC address and alias are kept by their bytes), and a
notification that repeats the last state of its link returns the same `Link`.
Anything else (a new shape, a truncated message) is decoded by `rtnl.decode_link`
and teaches a layout for the next.

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
MAX_LAYOUTS = 1 << 12
"""Layouts kept before the cache starts over (a few dozen shapes are usual)."""
LAYOUTS_PER_LENGTH = 4
"""Shapes of one message length tried before the least recently used one is dropped."""
MAX_LAST = 1 << 17
"""Links whose last state is remembered before that memory starts over."""
MAX_VALUES = 1 << 14
"""Decoded payloads (names, MACs, link info) kept before that cache starts over."""
_U32 = struct.Struct("=I")
_HEADER = rtnl.NLATTR
_IFINFOMSG = rtnl.IFINFOMSG


class Layout:
    """Where the attributes of one kind of notification of one link are."""

    __slots__ = ("headers", "heads", "values", "wanted")

    def __init__(self, heads: struct.Struct, headers: tuple[int, ...],
                 values: struct.Struct, wanted: tuple[int, ...]) -> None:
        self.heads = heads
        """Unpacks every top-level attribute header (length, type) from the message start."""
        self.headers = headers
        self.values = values
        """Unpacks the payloads of the wanted attributes present, in FIELDS order."""
        self.wanted = wanted
        """Index in FIELDS of each value `values` unpacks."""


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

    def __init__(self, *, remember: bool = True) -> None:
        self._remember = remember
        """Keep each link's last state, so a repeat returns the same Link (the watcher);
        without it (request answers, dumps) nothing grows with the number of links."""
        self._layouts: dict[int, list[Layout]] = {}
        """By message length, most recently used first."""
        self._count = 0
        self._last: dict[int, tuple[tuple[int, ...], tuple[Any, ...], int, Link]] = {}
        """By ifindex: the (wanted, payloads, flags, Link) of its last message."""
        self._strings: dict[bytes, str | None] = {}
        self._macs: dict[bytes, str | None] = {}
        self._infos: dict[bytes, tuple[str, BridgeSettings | None, TunSettings | None]] = {}
        self.hits = 0
        """Messages decoded through a layout (the rest went through rtnl.decode_link)."""

    def decode(self, buf: rtnl.Buffer, start: int, end: int) -> Link:
        """The Link of the message at buf[start:end] (start: its nlmsghdr)."""
        body = start + rtnl.NLMSGHDR.size
        _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(buf, body)
        shapes = self._layouts.get(end - start)
        if shapes is not None:
            for n, layout in enumerate(shapes):
                if layout.heads.unpack_from(buf, start) == layout.headers:
                    if n:
                        shapes.insert(0, shapes.pop(n))
                    return self._through(layout, buf, start, index, flags)
        self._teach(buf, start, end)
        return rtnl.decode_link(buf, body, end)

    def forget(self, index: int) -> None:
        """The link is gone (RTM_DELLINK): its last state is no longer needed."""
        self._last.pop(index, None)

    def _through(self, layout: Layout, buf: rtnl.Buffer, start: int, index: int,
                 flags: int) -> Link:
        self.hits += 1
        payloads = layout.values.unpack_from(buf, start)
        wanted = layout.wanted
        if not self._remember:
            return self._build(index, flags, payloads, wanted)
        last = self._last.get(index)
        if (last is not None and last[1] == payloads and last[2] == flags
                and last[0] == wanted):
            return last[3]
        link = self._build(index, flags, payloads, wanted)
        if last is None and len(self._last) >= MAX_LAST:
            self._last.clear()
        self._last[index] = (wanted, payloads, flags, link)
        return link

    def _teach(self, buf: rtnl.Buffer, start: int, end: int) -> None:
        layout = _learn(buf, start, end)
        if layout is None:
            return
        if self._count >= MAX_LAYOUTS:
            self._layouts.clear()
            self._count = 0
        shapes = self._layouts.setdefault(end - start, [])
        shapes.insert(0, layout)
        self._count += 1
        if len(shapes) > LAYOUTS_PER_LENGTH:
            shapes.pop()
            self._count -= 1

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
        # Kept by the bytes of its kind and data only: a bridge port's IFLA_LINKINFO
        # goes on with its port data (IFLA_INFO_SLAVE_*: port number, timers), which
        # differ from port to port and are not read.
        key = raw[:_kind_and_data(raw)]
        try:
            return self._infos[key]
        except KeyError:
            pass
        # What rtnl.decode_link does with IFLA_LINKINFO, once per distinct payload.
        inner = rtnl.nested(memoryview(key))
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
        value = self._infos[key] = (kind, bridge, tun)
        return value


def _kind_and_data(raw: bytes) -> int:
    """Where IFLA_LINKINFO's IFLA_INFO_KIND and IFLA_INFO_DATA end, when they come
    first as the kernel puts them (rtnl_link_fill); else the whole payload's length."""
    pos = 0
    for wanted in (rtnl.IFLA_INFO_KIND, rtnl.IFLA_INFO_DATA):
        if pos + 4 > len(raw):
            return len(raw)
        length, kind = _HEADER.unpack_from(raw, pos)
        if kind & rtnl.NLA_TYPE_MASK != wanted or length < 4 or pos + length > len(raw):
            return pos if wanted == rtnl.IFLA_INFO_DATA and pos else len(raw)
        pos += (length + 3) & ~3
    return min(pos, len(raw))


def _u32(raw: bytes | None) -> int | None:
    return None if raw is None or len(raw) < 4 else int(_U32.unpack_from(raw)[0])
