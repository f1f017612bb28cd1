"""pyroute2 as the reference codec: its parse of an RTM_NEWLINK as a vnetd Link, and
link messages it encodes for vnetd's decoders to read.

vnetd decodes link messages itself (vnetd/net/rtnl.py); the tests compare that
with what pyroute2's full decode of the same bytes says. This mapping is the
only place pyroute2's message objects are turned into Links.
"""

from __future__ import annotations

from typing import Any

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from vnetd.net import rtnl
from vnetd.net.model import BridgeSettings, Link, TunSettings

IFF_UP = 0x1
_CENTI = 100.0


def link_from_pyroute2(msg: Any) -> Link:
    """One decoded pyroute2 ifinfmsg into a Link."""
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "device"
    data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    bridge = tun_settings = None
    if kind == "bridge" and data is not None:
        bridge = BridgeSettings(
            stp=bool(data.get("IFLA_BR_STP_STATE")),
            forward_delay=(data.get("IFLA_BR_FORWARD_DELAY") or 0) / _CENTI,
            ageing_time=(data.get("IFLA_BR_AGEING_TIME") or 0) / _CENTI,
            vlan_filtering=bool(data.get("IFLA_BR_VLAN_FILTERING")),
        )
    elif kind == "tun" and data is not None:
        mode = "tap" if data.get("IFLA_TUN_TYPE") == 2 else "tun"
        kind = mode
        tun_settings = TunSettings(
            mode=mode,
            owner_uid=data.get("IFLA_TUN_OWNER"),
            group_gid=data.get("IFLA_TUN_GROUP"),
            multi_queue=bool(data.get("IFLA_TUN_MULTI_QUEUE")),
            vnet_hdr=bool(data.get("IFLA_TUN_VNET_HDR")),
            persistent=bool(data.get("IFLA_TUN_PERSIST")),
        )
    elif kind == "device" and msg.get("ifname") == "lo":
        kind = "loopback"
    master = msg.get("master")
    return Link(
        index=int(msg["index"]),
        name=msg.get("ifname"),
        kind=kind,
        mtu=int(msg.get("mtu") or 0),
        mac=msg.get("address") or None,
        up=bool(msg["flags"] & IFF_UP),
        oper_state=str(msg.get("operstate") or "UNKNOWN").lower(),
        carrier=bool(msg.get("carrier")),
        master=int(master) if master else None,
        alias=msg.get("ifalias") or None,
        bridge=bridge,
        tun=tun_settings,
        carrier_changes=int(msg.get("carrier_changes") or 0),
        group=int(msg.get("group") or 0),
    )


def decode_with_pyroute2(raw: bytes) -> list[Any]:
    """Every message of a datagram, decoded by pyroute2's rtnetlink marshal."""
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl

    return list(MarshalRtnl().parse(raw))


def encode_link(index: int, name: str, *, mtu: int = 1500, mac: str | None = None,
                flags: int = 0, oper: str = "DOWN", carrier: int = 0,
                carrier_changes: int | None = None, master: int | None = None,
                group: int | None = None,
                alias: str | None = None, linkinfo: dict[str, Any] | None = None,
                extra: bool = False, mtype: int = rtnl.RTM_NEWLINK) -> bytes:
    """An RTM_NEWLINK (or `mtype`) built by pyroute2 with the given attributes."""
    m = ifinfmsg()
    m["header"]["type"] = mtype
    m["index"] = index
    m["flags"] = flags
    attrs: list[tuple[str, object]] = [("IFLA_IFNAME", name), ("IFLA_MTU", mtu),
                                       ("IFLA_OPERSTATE", oper), ("IFLA_CARRIER", carrier)]
    if extra:  # attributes no consumer reads: the walker must step over them
        attrs += [("IFLA_TXQLEN", 1000), ("IFLA_PROMISCUITY", 0),
                  ("IFLA_QDISC", "noqueue"), ("IFLA_BROADCAST", "ff:ff:ff:ff:ff:ff")]
    if carrier_changes is not None:
        attrs.append(("IFLA_CARRIER_CHANGES", carrier_changes))
    if group is not None:
        attrs.append(("IFLA_GROUP", group))
    if mac is not None:
        attrs.append(("IFLA_ADDRESS", mac))
    if master is not None:
        attrs.append(("IFLA_MASTER", master))
    if alias is not None:
        attrs.append(("IFLA_IFALIAS", alias))
    if linkinfo is not None:
        attrs.append(("IFLA_LINKINFO", linkinfo))
    m["attrs"] = attrs
    m.encode()
    return bytes(m.data)
