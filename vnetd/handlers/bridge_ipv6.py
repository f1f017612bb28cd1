"""The `ipv6` option of bridge.ensure: what IPv6 a bridge should have, and getting it there.

OSSN-0069 for bridges: a bridge vnetd creates has no IPv6 unless `ipv6: true` asks
for it, so the guests on its ports cannot reach the host over IPv6 (no link-local
address, no SLAAC address from a guest's router advertisement). The creation itself
is in the backend (NetBackend.add_bridge); this module decides, for a bridge that
exists, whether its IPv6 differs from what was asked, and validates what cannot be.
It must not change a bridge the handler has not checked is vnetd's.
"""

from __future__ import annotations

from vnetd.contract.commands import BridgeEnsure
from vnetd.contract.errors import InvalidArgument, Unsupported
from vnetd.handlers.context import Context
from vnetd.net.model import Ipv6State, Link
from vnetd.net.rtnl import IPV6_MIN_MTU

DEFAULT_MTU = 1500
"""The MTU of a new bridge with no MTU asked for (and no ports yet)."""


def check(cmd: BridgeEnsure, link: Link | None) -> None:
    """`ipv6: true` with an MTU under 1280 cannot be had: refused before any change."""
    mtu = cmd.mtu if cmd.mtu is not None else (link.mtu if link is not None else DEFAULT_MTU)
    if cmd.ipv6 is True and mtu < IPV6_MIN_MTU:
        raise InvalidArgument(
            f"bridge {cmd.name}: ipv6 needs an MTU of at least {IPV6_MIN_MTU} (this one "
            f"would have {mtu}); the kernel keeps no IPv6 below it",
            field="ipv6", name=cmd.name, mtu=mtu)


def crosses_min_mtu(link: Link, mtu: int | None) -> bool:
    """Raising the MTU from under 1280 gives the bridge IPv6 state anew, with the
    namespace's defaults (IPv6 on): the caller then converges it again."""
    return mtu is not None and link.mtu < IPV6_MIN_MTU <= mtu


async def state_of(ctx: Context, link: Link) -> Ipv6State | None:
    return (await ctx.net.ipv6_states([link.name]))[0]


def needs_change(state: Ipv6State | None, wanted: bool) -> bool:
    """Whether `state` differs from on (`wanted`) or off: both halves of off count
    (mode none alone still lets a router advertisement in)."""
    if state is None:
        return False  # no IPv6 state: nothing there to turn off (on was refused in check)
    return not state.on if wanted else not state.off


async def converge(ctx: Context, link: Link, wanted: bool,
                   state: Ipv6State | None) -> bool:
    """Set the bridge's IPv6 to `wanted` when it is not; True when it changed it."""
    if state is None and wanted:
        raise Unsupported(f"bridge {link.name}: the kernel keeps no IPv6 state for it "
                          "(a kernel without IPv6?)", name=link.name, feature="ipv6")
    if not needs_change(state, wanted):
        return False
    await ctx.net.set_ipv6(link, wanted)
    return True


def view(state: Ipv6State | None) -> bool | None:
    """The reply's `ipv6`: true when the bridge may have IPv6 addresses (disable_ipv6
    0), false when IPv6 is disabled on it, null when the kernel keeps no IPv6 state
    for it (an MTU under 1280, a kernel without IPv6)."""
    return None if state is None else state.enabled
