"""Ownership policy: what vnetd may change, attach or never touch.

vnetd changes and deletes only devices it created (marked in the kernel), may
attach unowned devices only when config names them `attachable`, and never
touches `protected` ones (lo and the default-route interface by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from vnetd.contract.errors import Conflict, Forbidden, NotFound
from vnetd.net.model import Link


@dataclass(frozen=True)
class Policy:
    attachable: tuple[str, ...] = ()
    protected: tuple[str, ...] = ("lo",)

    def is_protected(self, name: str) -> bool:
        return any(fnmatchcase(name, pattern) for pattern in self.protected)

    def is_attachable(self, name: str) -> bool:
        return any(fnmatchcase(name, pattern) for pattern in self.attachable)

    def with_protected(self, names: set[str]) -> Policy:
        return Policy(self.attachable, tuple(sorted(set(self.protected) | names)))

    def check_protected(self, name: str, action: str) -> None:
        if self.is_protected(name):
            raise Forbidden(f"{name} is protected by configuration; vnetd will not {action} it",
                            name=name)

    def require_owned(self, link: Link, action: str) -> None:
        """Refuse to change a device that is protected or that vnetd did not create."""
        self.check_protected(link.name, action)
        if not link.owned:
            raise Forbidden(
                f"{link.name} exists but was not created by vnetd; vnetd will not {action} it",
                name=link.name, alias=link.alias)

    def require_may_attach(self, link: Link) -> None:
        """A port must be ours, or named attachable by config, and never protected."""
        self.check_protected(link.name, "attach")
        if not link.owned and not self.is_attachable(link.name):
            raise Forbidden(
                f"{link.name} was not created by vnetd and is not listed in policy.attachable",
                name=link.name)


def require_kind(link: Link, kind: str) -> None:
    if link.kind != kind:
        raise Conflict(f"{link.name} exists as a {link.kind}, not a {kind}",
                       name=link.name, kind=link.kind)


def require_link(link: Link | None, name: str, what: str = "device") -> Link:
    if link is None:
        raise NotFound(f"{what} {name} does not exist", name=name)
    return link
