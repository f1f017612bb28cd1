"""Help texts of the op subcommands, read from the op table (contract/).

A model's docstring is its help; ops without one get the short line below (the
command an admin would type for the same thing).
"""

from __future__ import annotations

import json
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from vnetd.cli import exits
from vnetd.contract import commands as contract

SUMMARIES = {
    "batch": "many ops in one job, one reply (commands=[{op, args}, ...])",
    "bridge.delete": "delete a bridge vnetd created (brctl delbr)",
    "bridge.ensure": "create or converge a bridge (brctl addbr)",
    "bridge.list": "every bridge and its ports (brctl show)",
    "cleanup.run": "remove vnetd's orphaned devices now (dry_run=true: only list them)",
    "host.health": "is the host up: kernel features, broker, libvirt, and why degraded",
    "host.snapshot": "every link (and network) with the event stream position",
    "link.list": "every link (ip -br link)",
    "link.set": "set a vnetd device up/down, its MTU or MAC (ip link set)",
    "network.autostart": "virsh net-autostart",
    "network.destroy": "virsh net-destroy",
    "network.dumpxml": "virsh net-dumpxml",
    "network.list": "every libvirt network (virsh net-list --all)",
    "network.start": "virsh net-start",
    "network.undefine": "virsh net-undefine",
    "port.attach": "attach a device to a bridge (brctl addif)",
    "port.detach": "detach a device from its bridge (brctl delif)",
    "tap.delete": "delete a TAP vnetd created (ip tuntap del)",
    "tap.ensure": "create or converge a TAP, optionally on a bridge (ip tuntap add + brctl addif)",
}


_SIMPLE = {"str": "string", "int": "integer", "float": "number", "bool": "true|false",
           "dict": "object"}


def _type_name(t: Any) -> str:
    """A JSON-ish name of an argument's type: `string`, `integer`, `list`, `a|b`."""
    origin, args = get_origin(t), get_args(t)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (list, tuple, set, frozenset):
        return "list"
    if origin is dict:
        return "object"
    if isinstance(t, type):
        return _SIMPLE.get(t.__name__, t.__name__)
    return str(t)


def summary(op: str) -> str:
    doc = (contract.OPS[op].__doc__ or "").strip()
    if doc and not doc.startswith("Base of"):
        return doc.splitlines()[0]
    return SUMMARIES.get(op, f"the {op} op")


def epilog(op: str) -> str:
    """Every argument with its type, default and note; then the exit statuses."""
    model = contract.OPS[op]
    lines = ["arguments (key=value; values are parsed as JSON, key=@FILE reads one):"]
    for name, field in model.model_fields.items():
        default = "required" if field.is_required() else f"default {json.dumps(field.default)}"
        note = f"; {field.description}" if field.description else ""
        lines.append(f"  {name}=  {_type_name(field.annotation)}, {default}{note}")
    if not model.model_fields:
        lines.append("  (none)")
    return "\n".join(lines) + "\n\n" + exits.HELP
