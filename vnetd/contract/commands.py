"""Command models of links, hosts and batches, and the op table of the whole contract.

A request is `{"op": "<resource>.<verb>", "args": {...}}`. `parse_request`
validates the envelope, looks the op up in `OPS` and validates its args, so
nothing invalid ever reaches a handler. Unknown ops and unknown fields are
rejected.

Each model carries its `OpSpec` (vnetd.contract.base); `build_op_table` is the
one list of every op module's models (adding an op: docs/contract.md, Adding an op).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vnetd.contract import cleanup, network, overlay, ovs
from vnetd.contract.base import Command, OpSpec
from vnetd.contract.errors import InvalidArgument
from vnetd.contract.types import IfName, Mac, Mtu, not_libvirt_reserved


class BridgeEnsure(Command):
    op: ClassVar[str] = "bridge.ensure"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "create a bridge or converge its attributes", exclusive=("name",), leases=("name",),
        hold="hold_seconds", subject="name")
    name: IfName
    mtu: Mtu | None = None
    mac: Mac | None = None
    stp: bool | None = None
    forward_delay: float | None = Field(default=None, ge=2, le=30,
                                        description="seconds; the kernel allows 2 to 30")
    ageing_time: float | None = Field(
        default=None, ge=1, le=1_000_000,
        description="seconds; 0 (which would turn off learning and flood) is refused")
    vlan_filtering: bool | None = None
    ipv6: bool | None = Field(
        default=None,
        description="IPv6 on the bridge itself (OSSN-0069). A new bridge: unset or false, "
                    "none ever (no link-local address, no SLAAC from a guest's router "
                    "advertisement); true, the kernel's defaults. An existing bridge: "
                    "unset leaves it as it is; true or false converges it")
    up: bool = True
    hold_seconds: float | None = Field(
        default=None, ge=0, le=7 * 86_400,
        description="keep the device from cleanup this long (a VM start, a migration)")

    _reserved = field_validator("name")(not_libvirt_reserved)


class BridgeDelete(Command):
    op: ClassVar[str] = "bridge.delete"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "delete a bridge vnetd owns", exclusive=("name",), subject="name")
    name: IfName


class BridgeList(Command):
    op: ClassVar[str] = "bridge.list"
    op_spec: ClassVar[OpSpec] = OpSpec("every bridge with its ports", read_only=True)


class TapEnsure(Command):
    op: ClassVar[str] = "tap.ensure"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "create a TAP or converge it, optionally in a bridge", exclusive=("name",),
        shared=("bridge",), leases=("name", "bridge"), hold="hold_seconds", subject="name")
    name: IfName
    bridge: IfName | None = None
    mtu: Mtu | None = None
    mac: Mac | None = None
    owner_uid: int | None = Field(default=None, ge=0, lt=2**32 - 1)
    group_gid: int | None = Field(default=None, ge=0, lt=2**32 - 1)
    multi_queue: bool = False
    vnet_hdr: bool = False
    ipv6: bool = Field(default=False, description="keep IPv6 (link-local) on the TAP")
    up: bool = True
    hold_seconds: float | None = Field(
        default=None, ge=0, le=7 * 86_400,
        description="keep the device from cleanup this long (a VM start, a migration)")

    _reserved = field_validator("name")(not_libvirt_reserved)

    @model_validator(mode="after")
    def _not_own_bridge(self) -> TapEnsure:
        if self.bridge == self.name:
            raise ValueError("a TAP cannot be attached to itself")
        return self


class TapDelete(Command):
    op: ClassVar[str] = "tap.delete"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "delete a TAP vnetd owns", exclusive=("name",), subject="name")
    name: IfName


class PortAttach(Command):
    op: ClassVar[str] = "port.attach"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "put a device into a bridge", exclusive=("name",), shared=("bridge",),
        leases=("name", "bridge"), hold="hold_seconds", subject="name")
    name: IfName
    bridge: IfName
    hold_seconds: float | None = Field(
        default=None, ge=0, le=7 * 86_400,
        description="keep the device from cleanup this long (a VM start, a migration)")

    @model_validator(mode="after")
    def _distinct(self) -> PortAttach:
        if self.bridge == self.name:
            raise ValueError("a device cannot be attached to itself")
        return self


class PortDetach(Command):
    op: ClassVar[str] = "port.detach"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "take a device out of its bridge", exclusive=("name",), subject="name")
    name: IfName


class LinkSet(Command):
    op: ClassVar[str] = "link.set"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "set up/down, MTU or MAC of an owned device", exclusive=("name",), subject="name")
    name: IfName
    up: bool | None = None
    mtu: Mtu | None = None
    mac: Mac | None = None

    @model_validator(mode="after")
    def _something(self) -> LinkSet:
        if self.up is None and self.mtu is None and self.mac is None:
            raise ValueError("link.set needs at least one of up, mtu, mac")
        return self


class LinkList(Command):
    op: ClassVar[str] = "link.list"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "links of the host, optionally by kind or owned only", read_only=True)
    kind: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,32}$")
    owned_only: bool = False


class HostSnapshot(Command):
    op: ClassVar[str] = "host.snapshot"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "links (and networks) with the event stream position", read_only=True)


class HostHealth(Command):
    op: ClassVar[str] = "host.health"
    op_spec: ClassVar[OpSpec] = OpSpec("kernel features and dependency states", read_only=True)


class SubCommand(BaseModel):
    """One entry of a batch, before its args are validated against its op."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    op: str
    args: dict[str, Any] = Field(default_factory=dict)


MAX_BATCH = 5000


class Batch(Command):
    op: ClassVar[str] = "batch"
    op_spec: ClassVar[OpSpec] = OpSpec(
        "many commands in one job (each takes its own locks)",
        event_result=("completed", "failed", "skipped"))
    commands: tuple[Command, ...] = Field(min_length=1, max_length=MAX_BATCH)
    stop_on_error: bool = True

    @field_validator("commands", mode="before")
    @classmethod
    def _parse_each(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, list | tuple):
            return value
        ops = _table_of(info)
        parsed: list[Command] = []
        for i, item in enumerate(value):
            try:
                sub = SubCommand.model_validate(item)
                if sub.op == Batch.op:
                    raise ValueError("a batch cannot contain another batch")
                parsed.append(parse_args(sub.op, sub.args, ops))
            except InvalidArgument as exc:
                raise ValueError(f"commands[{i}] ({_op_of(item)}): {exc.message}") from exc
            except ValidationError as exc:
                raise ValueError(f"commands[{i}]: {describe(exc)}") from exc
        return tuple(parsed)


def _op_of(item: Any) -> str:
    return str(item.get("op")) if isinstance(item, dict) else "?"


OpTable = Mapping[str, type[Command]]

LINK_OPS: tuple[type[Command], ...] = (
    BridgeEnsure, BridgeDelete, BridgeList, TapEnsure, TapDelete, PortAttach, PortDetach,
    LinkSet, LinkList, HostSnapshot, HostHealth, Batch)


def build_op_table(*groups: Iterable[type[Command]]) -> OpTable:
    """The op table: every op of the contract, from each op module's list of models.

    Refuses (at import, so a test or the daemon's start fails loudly) a model
    without its own `spec`, a spec that names fields the model lacks, an op
    listed twice.
    """
    table: dict[str, type[Command]] = {}
    for model in (m for group in (groups or _ALL_GROUPS) for m in group):
        if not isinstance(model.__dict__.get("op_spec"), OpSpec):
            raise TypeError(f"{model.__name__} ({model.op}) declares no op_spec of its own")
        problems = model.op_spec.problems(set(model.model_fields))
        if problems:
            raise TypeError(f"spec of {model.op}: " + "; ".join(problems))
        if model.op in table:
            raise ValueError(f"op {model.op} listed twice")
        table[model.op] = model
    return MappingProxyType(table)


_ALL_GROUPS: tuple[tuple[type[Command], ...], ...] = (
    LINK_OPS, network.NETWORK_OPS, cleanup.CLEANUP_OPS, overlay.OVERLAY_OPS, ovs.OVS_OPS)

OPS: OpTable = build_op_table()
"""Every op vnetd's contract defines, by name (read-only: built once, above)."""


def spec_of(op: str) -> OpSpec | None:
    """The spec of an op by name; None for a name that is no op (an invalid request)."""
    model = OPS.get(op)
    return None if model is None else model.op_spec


def is_read_only(op: str) -> bool:
    spec = spec_of(op)
    return spec is not None and spec.read_only


def _table_of(info: ValidationInfo) -> OpTable:
    ops = info.context.get("ops") if isinstance(info.context, dict) else None
    return ops if ops is not None else OPS


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    op: str = Field(min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)


def describe(exc: ValidationError) -> str:
    """A short human sentence for a pydantic error: `field: problem; ...`."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_args(op: str, args: dict[str, Any], ops: OpTable = OPS) -> Command:
    model = ops.get(op)
    if model is None:
        raise InvalidArgument(f"unknown op {op!r}", known_ops=sorted(ops))
    try:
        return model.model_validate(args, context={"ops": ops})
    except ValidationError as exc:
        raise InvalidArgument(f"{op}: {describe(exc)}", op=op,
                              errors=_error_list(exc)) from exc


def _error_list(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]),
         "problem": e["msg"].removeprefix("Value error, ")}
        for e in exc.errors(include_url=False)
    ]


def parse_request(body: Any, ops: OpTable = OPS) -> Command:
    """Validate a decoded JSON body; raises InvalidArgument with a clear message."""
    if not isinstance(body, dict):
        raise InvalidArgument(f"request body must be a JSON object, got {type(body).__name__}")
    try:
        envelope = Envelope.model_validate(body)
    except ValidationError as exc:
        raise InvalidArgument(f"bad request envelope: {describe(exc)}",
                              errors=_error_list(exc)) from exc
    return parse_args(envelope.op, envelope.args, ops)
