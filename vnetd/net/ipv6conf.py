"""A link's per-device IPv6 sysctls (net.ipv6.conf.<name>.*), read and written as files.

There is no netlink request for `disable_ipv6` (only the address generation mode has
one, rtnl.addr_gen_mode), and the daemon runs no `sysctl`: these are plain file
operations under /proc/sys, which answer for the network namespace of the calling
thread, so they must run on the namespace worker (net/netns.py). Nothing here
decides anything; net/netlink.py orders the writes.
"""

from __future__ import annotations

from vnetd.net.model import Ipv6State

CONF = "/proc/sys/net/ipv6/conf"


def _path(name: str, key: str) -> str:
    # IfName (vnetd/contract/types.py) refuses "/" and the names "." and "..": a
    # name never leaves its own directory.
    return f"{CONF}/{name}/{key}"


def read_state(name: str) -> Ipv6State | None:
    """The link's IPv6 state; None when the kernel keeps none for it (no IPv6 in the
    kernel, an MTU under 1280, or no such link)."""
    try:
        with open(_path(name, "disable_ipv6")) as f:
            disabled = f.read().strip() != "0"
        with open(_path(name, "addr_gen_mode")) as f:
            mode = int(f.read().strip())
    except (FileNotFoundError, NotADirectoryError):
        return None
    return Ipv6State(disabled=disabled, addr_gen_mode=mode)


def read_states(names: list[str]) -> list[Ipv6State | None]:
    """`read_state` of each (one hop to the worker for a whole bridge list)."""
    return [read_state(name) for name in names]


def write_disabled(name: str, disabled: bool) -> None:
    """Write disable_ipv6. OSError(ENOENT) when the kernel keeps no IPv6 state for the
    link: the caller decides whether that matters (see NetlinkBackend.set_ipv6)."""
    with open(_path(name, "disable_ipv6"), "w") as f:
        f.write("1" if disabled else "0")
