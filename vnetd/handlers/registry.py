"""The explicit map from command model to handler, built in one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from vnetd.contract import commands as c
from vnetd.contract import network as n
from vnetd.contract import overlay as o
from vnetd.contract import ovs as ov
from vnetd.contract.base import Command
from vnetd.contract.cleanup import CleanupRun
from vnetd.handlers import bridge, fdb, host, link, network, ovs, port, tap, vxlan
from vnetd.handlers.cleanup import run as cleanup_run
from vnetd.handlers.context import Context

Handler = Callable[[Any, Context], Awaitable[dict[str, Any]]]
Registry = dict[type[Command], Handler]


def build_registry() -> Registry:
    """Every op vnetd serves. `batch` is not here: the dispatcher runs it."""
    return {
        c.BridgeEnsure: bridge.ensure,
        c.BridgeDelete: bridge.delete,
        c.BridgeList: bridge.list_,
        c.TapEnsure: tap.ensure,
        c.TapDelete: tap.delete,
        c.PortAttach: port.attach,
        c.PortDetach: port.detach,
        c.LinkSet: link.set_,
        c.LinkList: link.list_,
        c.HostSnapshot: host.snapshot,
        c.HostHealth: host.health,
        CleanupRun: cleanup_run,
        n.NetworkDefine: network.define,
        n.NetworkCreate: network.create,
        n.NetworkStart: network.start,
        n.NetworkDestroy: network.destroy,
        n.NetworkUndefine: network.undefine,
        n.NetworkAutostart: network.autostart,
        n.NetworkDumpxml: network.dumpxml,
        n.NetworkList: network.list_,
        n.NetworkUpdate: network.update,
        o.VxlanEnsure: vxlan.ensure,
        o.VxlanDelete: vxlan.delete,
        o.FdbConverge: fdb.converge,
        ov.OvsBridgeEnsure: ovs.ensure,
        ov.OvsBridgeDelete: ovs.delete,
        ov.OvsBridgeList: ovs.list_,
        ov.OvsPortAttach: ovs.attach,
        ov.OvsPortDetach: ovs.detach,
    }
