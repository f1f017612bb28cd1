"""The typed interface handlers use to change the kernel's links.

Implementations: `netlink.NetlinkBackend` (the real kernel, through pyroute2)
and the fakes in the unit tests. Errors are raised as contract errors
(`vnetd.contract.errors`) so handlers never see errno values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from vnetd.contract.errors import VnetdError
from vnetd.net.model import BridgeOptions, Ipv6State, Link, LinkChange, TapSpec
from vnetd.net.overlay import OverlayBackend


class NetBackend(Protocol):
    async def get_link(self, name: str) -> Link | None:
        """The link called `name`, or None when there is none."""

    async def get_link_by_index(self, index: int) -> Link | None:
        """The link with this index, or None when there is none."""

    async def list_links(self, *, exact: bool = True) -> list[Link]:
        """Every link in the namespace: a consistent dump, retried when interrupted;
        Unavailable if it never is. `exact=False`: after the retries, the last
        interrupted dump (links added or removed meanwhile may be missing or doubled),
        for a caller that re-checks each link it acts on."""

    async def add_bridge(self, name: str, mtu: int | None, mac: str | None,
                         options: BridgeOptions, *, ipv6: bool = False) -> None:
        """Create a bridge (down), marked as vnetd's; Conflict if the name is taken.

        Without `ipv6` the bridge never has an IPv6 address, not even for a moment:
        address generation none and disable_ipv6 are both set before anything can
        bring it up (`ipv6`: the kernel's defaults). A kill midway leaves at most a
        `half_created` bridge (see finish_creation), with IPv6 possibly still on."""

    async def finish_creation(self, link: Link) -> None:
        """Finish a creation a kill cut short (`link.half_created`): mark, leave the group."""

    async def get_links(self, names: Sequence[str]) -> list[Link | None]:
        """The links called `names`, None for each that does not exist (one round trip)."""

    async def add_tap(self, spec: TapSpec, change: LinkChange) -> Link:
        """Create a persistent TAP device, marked as vnetd's, with `change` applied
        (mtu, mac, master, up) and no IPv6 address ever unless `spec.ipv6`; returns
        its state. A kill midway leaves no TAP at all."""

    async def add_taps(self, items: Sequence[tuple[TapSpec, LinkChange]],
                       stop_on_error: bool) -> list[Link | VnetdError | None]:
        """`add_tap` for each item, in as few requests as the kernel allows: a Link or
        the error for each; with `stop_on_error`, None for every item after the first
        failure, and nothing of those is left in the kernel."""

    async def set_tap_owner(self, spec: TapSpec) -> None:
        """Change owner/group of an existing persistent TAP no process holds."""

    async def set_link(self, index: int, change: LinkChange) -> None:
        """Apply every non-None field of `change` in one request."""

    async def change_link(self, index: int, change: LinkChange) -> Link:
        """`set_link`, and the link's state after it (one round trip)."""

    async def delete_link(self, index: int) -> None:
        """Delete the link; raises NotFound when it is already gone."""

    async def disable_ipv6(self, name: str) -> None:
        """Stop the kernel from giving the link an IPv6 (link-local) address."""

    async def ipv6_states(self, names: Sequence[str]) -> list[Ipv6State | None]:
        """The IPv6 state of each link (None: the kernel keeps none for it), in one go."""

    async def set_ipv6(self, link: Link, enabled: bool) -> None:
        """Set the link's IPv6 on (address generation eui64, disable_ipv6 0) or off
        (address generation none, disable_ipv6 1). Unsupported when the kernel keeps
        no IPv6 state for the link (MTU under 1280)."""

    async def default_route_interfaces(self) -> set[str]:
        """Names of the links that carry a default route (IPv4 or IPv6)."""

    async def features(self) -> dict[str, bool | str]:
        """Kernel feature checks: bridge and tun support, /dev/net/tun usable."""

    def overlay(self) -> OverlayBackend:
        """VXLAN devices, their FDB and neighbour tables (vnetd.net.overlay)."""

    async def close(self) -> None:
        """Release sockets and threads."""
