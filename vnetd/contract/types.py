"""Field types that encode the kernel's rules once, for every command."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

_IFNAME_ALLOWED = re.compile(r"[A-Za-z0-9_.\-]+")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
IFNAMSIZ = 16  # includes the trailing NUL: 15 usable bytes


def _check_ifname(value: str) -> str:
    raw = value.encode("utf-8", "surrogatepass")
    if not 1 <= len(raw) < IFNAMSIZ:
        raise ValueError(f"interface name must be 1 to {IFNAMSIZ - 1} bytes, got {len(raw)}")
    if value in (".", ".."):
        raise ValueError("interface name cannot be '.' or '..'")
    if not _IFNAME_ALLOWED.fullmatch(value):
        raise ValueError(
            "interface name may contain only letters, digits, '_', '.' and '-' "
            "(no '/', ':', '%' or whitespace)"
        )
    return value


def _check_mac(value: str) -> str:
    mac = value.lower()
    if not _MAC.fullmatch(mac):
        raise ValueError("MAC address must be six hex octets separated by ':'")
    if int(mac[:2], 16) & 1:
        raise ValueError("MAC address must be unicast (the first octet has the multicast bit)")
    if mac == "00:00:00:00:00:00":
        raise ValueError("MAC address cannot be all zeros")
    return mac


# libvirt names its own devices vnetN, macvtapN and macvlanN and may reuse them.
_LIBVIRT_RESERVED = re.compile(r"(vnet|macvtap|macvlan)\d+")


def not_libvirt_reserved(name: str) -> str:
    """A validator for the name of a device vnetd creates: not one libvirt may reuse."""
    if _LIBVIRT_RESERVED.fullmatch(name):
        raise ValueError(f"{name!r} is in libvirt's reserved namespace (vnetN, macvtapN, macvlanN)")
    return name


IfName = Annotated[str, AfterValidator(_check_ifname)]
"""A Linux interface name: 1 to 15 bytes of [A-Za-z0-9_.-], not '.' or '..'."""

Mtu = Annotated[int, Field(ge=68, le=65535, strict=True)]
"""An MTU the kernel accepts for Ethernet-like devices (68 is IPv4's minimum)."""

Mac = Annotated[str, AfterValidator(_check_mac)]
"""A unicast Ethernet MAC address, normalised to lower case."""
