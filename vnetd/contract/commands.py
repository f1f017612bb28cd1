"""Command models: one frozen pydantic model per op, and the op table.

A request is `{"op": "<resource>.<verb>", "args": {...}}`. `parse_request`
validates the envelope, looks the op up in `OPS` and validates its args, so
nothing invalid ever reaches a handler. Unknown ops and unknown fields are
rejected.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vnetd.contract.errors import InvalidArgument
from vnetd.contract.types import IfName, Mac, Mtu

# libvirt names its own devices vnetN, macvtapN and macvlanN and may reuse them.
_LIBVIRT_RESERVED = re.compile(r"(vnet|macvtap|macvlan)\d+")


def _not_libvirt_reserved(name: str) -> str:
    if _LIBVIRT_RESERVED.fullmatch(name):
        raise ValueError(f"{name!r} is in libvirt's reserved namespace (vnetN, macvtapN, macvlanN)")
    return name


class Command(BaseModel):
    """Base of every command's args. Subclasses set `op`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    op: ClassVar[str]

    def lock_keys(self) -> tuple[str, ...]:
        """Names whose jobs must not run concurrently with this one."""
        name = getattr(self, "name", None)
        return (f"link:{name}",) if isinstance(name, str) else ()

    def shared_lock_keys(self) -> tuple[str, ...]:
        """Names this job uses but does not change (a TAP's bridge): many jobs may share
        them, while a job that changes or deletes that device waits for all of them."""
        bridge = getattr(self, "bridge", None)
        return (f"link:{bridge}",) if isinstance(bridge, str) else ()


class BridgeEnsure(Command):
    op: ClassVar[str] = "bridge.ensure"
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
    up: bool = True
    hold_seconds: float | None = Field(
        default=None, ge=0, le=7 * 86_400,
        description="keep the device from cleanup this long (a VM start, a migration)")

    _reserved = field_validator("name")(_not_libvirt_reserved)


class BridgeDelete(Command):
    op: ClassVar[str] = "bridge.delete"
    name: IfName


class BridgeList(Command):
    op: ClassVar[str] = "bridge.list"


class TapEnsure(Command):
    op: ClassVar[str] = "tap.ensure"
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

    _reserved = field_validator("name")(_not_libvirt_reserved)

    @model_validator(mode="after")
    def _not_own_bridge(self) -> TapEnsure:
        if self.bridge == self.name:
            raise ValueError("a TAP cannot be attached to itself")
        return self


class TapDelete(Command):
    op: ClassVar[str] = "tap.delete"
    name: IfName


class PortAttach(Command):
    op: ClassVar[str] = "port.attach"
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
    name: IfName


class LinkSet(Command):
    op: ClassVar[str] = "link.set"
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
    kind: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,32}$")
    owned_only: bool = False


class HostSnapshot(Command):
    op: ClassVar[str] = "host.snapshot"


class HostHealth(Command):
    op: ClassVar[str] = "host.health"


class SubCommand(BaseModel):
    """One entry of a batch, before its args are validated against its op."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    op: str
    args: dict[str, Any] = Field(default_factory=dict)


MAX_BATCH = 5000


class Batch(Command):
    op: ClassVar[str] = "batch"
    commands: tuple[Command, ...] = Field(min_length=1, max_length=MAX_BATCH)
    stop_on_error: bool = True

    @field_validator("commands", mode="before")
    @classmethod
    def _parse_each(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value
        parsed: list[Command] = []
        for i, item in enumerate(value):
            try:
                sub = SubCommand.model_validate(item)
                if sub.op == Batch.op:
                    raise ValueError("a batch cannot contain another batch")
                parsed.append(parse_args(sub.op, sub.args))
            except InvalidArgument as exc:
                raise ValueError(f"commands[{i}] ({_op_of(item)}): {exc.message}") from exc
            except ValidationError as exc:
                raise ValueError(f"commands[{i}]: {describe(exc)}") from exc
        return tuple(parsed)

    def lock_keys(self) -> tuple[str, ...]:
        return ()  # each sub-command takes its own locks when it runs

    def shared_lock_keys(self) -> tuple[str, ...]:
        return ()


def _op_of(item: Any) -> str:
    return str(item.get("op")) if isinstance(item, dict) else "?"


OPS: dict[str, type[Command]] = {}


def register_ops(*models: type[Command]) -> None:
    """Add command models to the op table (called once per resource module)."""
    for model in models:
        if model.op in OPS:
            raise ValueError(f"op {model.op} registered twice")
        OPS[model.op] = model


register_ops(BridgeEnsure, BridgeDelete, BridgeList, TapEnsure, TapDelete, PortAttach,
             PortDetach, LinkSet, LinkList, HostSnapshot, HostHealth, Batch)


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


def parse_args(op: str, args: dict[str, Any]) -> Command:
    model = OPS.get(op)
    if model is None:
        raise InvalidArgument(f"unknown op {op!r}", known_ops=sorted(OPS))
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        raise InvalidArgument(f"{op}: {describe(exc)}", op=op,
                              errors=_error_list(exc)) from exc


def _error_list(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]),
         "problem": e["msg"].removeprefix("Value error, ")}
        for e in exc.errors(include_url=False)
    ]


def parse_request(body: Any) -> Command:
    """Validate a decoded JSON body; raises InvalidArgument with a clear message."""
    if not isinstance(body, dict):
        raise InvalidArgument(f"request body must be a JSON object, got {type(body).__name__}")
    try:
        envelope = Envelope.model_validate(body)
    except ValidationError as exc:
        raise InvalidArgument(f"bad request envelope: {describe(exc)}",
                              errors=_error_list(exc)) from exc
    return parse_args(envelope.op, envelope.args)
