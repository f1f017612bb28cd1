"""pyroute2 as the reference decoder: its parse of an RTM_NEWLINK, as a vnetd Link.

vnetd decodes link messages itself (vnetd/net/rtnl.py); the tests compare that
with what pyroute2's full decode of the same bytes says. This mapping is the
only place pyroute2's message objects are turned into Links.
"""

from __future__ import annotations

from typing import Any

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
