"""The libvirt adapter: the only module that imports libvirt and libvirtaio.

Every libvirt call that may talk to libvirtd runs in a small thread pool
(run_in_executor), never on the event loop, so a slow `net-start` (firewall
rules, dnsmasq) never stalls other jobs or event publishing. libvirt's own
callbacks (lifecycle events, connection close) are dispatched by libvirtaio on
the loop or on a pool thread; they only hand their facts to the loop with
call_soon_threadsafe. The connection's lifecycle (open, callbacks, keepalive,
close) is driven by the libvirt watcher; handlers only see the VirtBackend calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import libvirt
import libvirtaio
import structlog

from vnetd.virt.backend import (
    DomainDefinitions,
    DomainState,
    NetworkState,
    Reason,
    UpdateAction,
    UpdateSection,
    VirtError,
)
from vnetd.virt.domain import interfaces_of

log = structlog.get_logger(__name__)
T = TypeVar("T")

EVENT_NAMES = {
    libvirt.VIR_NETWORK_EVENT_DEFINED: "defined",
    libvirt.VIR_NETWORK_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_NETWORK_EVENT_STARTED: "started",
    libvirt.VIR_NETWORK_EVENT_STOPPED: "stopped",
}
# Domain lifecycle events that change what a domain's NICs are plugged into, with the
# reasons libvirt gives (its `detail`).
DOMAIN_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_STARTED: ("started", {
        libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED: "booted",
        libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED: "migrated",
        libvirt.VIR_DOMAIN_EVENT_STARTED_RESTORED: "restored",
        libvirt.VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT: "from_snapshot",
        libvirt.VIR_DOMAIN_EVENT_STARTED_WAKEUP: "wakeup"}),
    libvirt.VIR_DOMAIN_EVENT_STOPPED: ("stopped", {
        libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shutdown",
        libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
        libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "crashed",
        libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated",
        libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "saved",
        libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "failed",
        libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: "from_snapshot"}),
}
DomainCallback = Callable[[str, str, str, str], None]
"""on_domain(uuid, name, "started"|"stopped"|"device-added"|"device-removed", detail):
the lifecycle reason, or the device's alias."""
_SECTIONS = {
    UpdateSection.DHCP_HOST: libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
    UpdateSection.DHCP_RANGE: libvirt.VIR_NETWORK_SECTION_IP_DHCP_RANGE,
}
_COMMANDS = {
    UpdateAction.ADD: libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
    UpdateAction.MODIFY: libvirt.VIR_NETWORK_UPDATE_COMMAND_MODIFY,
    UpdateAction.DELETE: libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
}
_REASONS: dict[int, Reason] = {
    libvirt.VIR_ERR_NO_NETWORK: Reason.NOT_FOUND,
    libvirt.VIR_ERR_NO_DOMAIN: Reason.NOT_FOUND,
    libvirt.VIR_ERR_XML_ERROR: Reason.INVALID,
    libvirt.VIR_ERR_XML_DETAIL: Reason.INVALID,
    libvirt.VIR_ERR_INVALID_ARG: Reason.INVALID,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED: Reason.UNSUPPORTED,
    libvirt.VIR_ERR_NO_SUPPORT: Reason.UNSUPPORTED,
    libvirt.VIR_ERR_OPERATION_UNSUPPORTED: Reason.UNSUPPORTED,
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED: Reason.UNSUPPORTED,
    libvirt.VIR_ERR_OPERATION_INVALID: Reason.CONFLICT,
    libvirt.VIR_ERR_NETWORK_EXIST: Reason.CONFLICT,
    libvirt.VIR_ERR_NO_CONNECT: Reason.UNAVAILABLE,
    libvirt.VIR_ERR_INVALID_CONN: Reason.UNAVAILABLE,
}

_IMPL_LOOP: dict[str, asyncio.AbstractEventLoop] = {}


def _quiet(_ctx: Any, _err: Any) -> None:
    """libvirt's default handler prints every error to stderr; vnetd reports them itself."""


def register_event_impl() -> None:
    """libvirtaio as libvirt's event loop: must happen before any connection is opened."""
    loop = asyncio.get_running_loop()
    if _IMPL_LOOP.get("loop") is not loop:
        libvirt.registerErrorHandler(_quiet, None)
        libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
        _IMPL_LOOP["loop"] = loop


class LibvirtBackend:
    """VirtBackend over one libvirt connection, plus the hooks the watcher drives."""

    def __init__(self, uri: str, *, adopt_unowned: bool = False, workers: int = 8) -> None:
        self.uri = uri
        self.adopt_unowned = adopt_unowned
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="libvirt")
        self._conn: Any = None
        self._callback_ids: list[int] = []
        self._domain_callback_ids: list[int] = []

    # ------------------------------------------------------------ plumbing
    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _translate(self, exc: libvirt.libvirtError, conn: Any) -> VirtError:
        code = exc.get_error_code()
        reason = _REASONS.get(code, Reason.FAILED)
        try:
            alive = bool(conn.isAlive())
        except libvirt.libvirtError:
            alive = False
        if not alive:
            reason = Reason.UNAVAILABLE
        msg = str(exc.get_error_message() or exc)
        return VirtError(reason, msg, code)

    async def _call(self, fn: Callable[[Any], T]) -> T:
        conn = self._conn
        if conn is None:
            raise VirtError(Reason.UNAVAILABLE, f"not connected to libvirtd ({self.uri})")

        def work() -> T:
            try:
                return fn(conn)
            except libvirt.libvirtError as exc:
                raise self._translate(exc, conn) from None

        return await self._run(work)

    # ------------------------------------------------------------ connection (watcher)
    async def open(self, on_event: Callable[[str, str], None],
                   on_close: Callable[[str], None], keepalive: tuple[int, int] = (5, 3),
                   on_domain: DomainCallback | None = None) -> None:
        """Open the connection, register lifecycle + close callbacks and keepalive.

        `on_event(name, "defined"|"undefined"|"started"|"stopped")`, `on_close(reason)`
        and `on_domain` (domain started/stopped, a device added/removed; see
        DomainCallback) are called on the event loop.
        """
        register_event_impl()
        loop = asyncio.get_running_loop()

        def lifecycle(_conn: Any, net: Any, event: int, _detail: int, _opaque: Any) -> None:
            name = EVENT_NAMES.get(event)
            if name is not None:
                loop.call_soon_threadsafe(on_event, net.name(), name)

        def closed(_conn: Any, reason: int, _opaque: Any) -> None:
            loop.call_soon_threadsafe(on_close, f"libvirt close reason {reason}")

        def domain_lifecycle(_conn: Any, dom: Any, event: int, detail: int,
                             _opaque: Any) -> None:
            known = DOMAIN_EVENTS.get(event)
            if known is not None and on_domain is not None:
                name, reasons = known
                loop.call_soon_threadsafe(on_domain, dom.UUIDString(), dom.name(), name,
                                          reasons.get(detail, str(detail)))

        def device(event: str) -> Callable[[Any, Any, str, Any], None]:
            def callback(_conn: Any, dom: Any, alias: str, _opaque: Any) -> None:
                if on_domain is not None:
                    loop.call_soon_threadsafe(on_domain, dom.UUIDString(), dom.name(), event,
                                              alias)
            return callback

        def connect() -> tuple[Any, int, list[int]]:
            conn = libvirt.open(self.uri)
            try:
                conn.registerCloseCallback(closed, None)
                conn.setKeepAlive(*keepalive)
                cb = conn.networkEventRegisterAny(
                    None, libvirt.VIR_NETWORK_EVENT_ID_LIFECYCLE, lifecycle, None)
                dom_cbs = [] if on_domain is None else [
                    conn.domainEventRegisterAny(
                        None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, domain_lifecycle, None),
                    conn.domainEventRegisterAny(
                        None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, device("device-added"),
                        None),
                    conn.domainEventRegisterAny(
                        None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                        device("device-removed"), None)]
            except BaseException:
                conn.close()
                raise
            return conn, cb, dom_cbs

        try:
            conn, cb, dom_cbs = await self._run(connect)
        except libvirt.libvirtError as exc:
            raise VirtError(Reason.UNAVAILABLE, str(exc.get_error_message() or exc),
                            exc.get_error_code()) from None
        self._conn = conn
        self._callback_ids = [cb]
        self._domain_callback_ids = dom_cbs

    async def close(self) -> None:
        """Drop the connection (after a loss, or at stop); never raises."""
        conn, self._conn = self._conn, None
        ids, self._callback_ids = self._callback_ids, []
        dom_ids, self._domain_callback_ids = self._domain_callback_ids, []
        if conn is None:
            return

        def work() -> None:
            # The connection may already be dead: each step is best effort.
            for cb in ids:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.networkEventDeregisterAny(cb)
            for cb in dom_ids:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.domainEventDeregisterAny(cb)
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

        await self._run(work)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ VirtBackend
    @staticmethod
    def _state(net: Any) -> NetworkState:
        return NetworkState(
            name=net.name(), uuid=net.UUIDString(), active=bool(net.isActive()),
            persistent=bool(net.isPersistent()), autostart=bool(net.autostart()),
            xml=net.XMLDesc(0))

    async def list_networks(self) -> list[NetworkState]:
        def work(conn: Any) -> list[NetworkState]:
            out = []
            for net in conn.listAllNetworks(0):
                try:
                    out.append(self._state(net))
                except libvirt.libvirtError as exc:  # vanished while we listed it
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                        raise
            return out
        return await self._call(work)

    async def get_network(self, name: str) -> NetworkState | None:
        def work(conn: Any) -> NetworkState | None:
            try:
                return self._state(conn.networkLookupByName(name))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                    return None
                raise
        return await self._call(work)

    async def network_xml(self, name: str, inactive: bool) -> str:
        flags = libvirt.VIR_NETWORK_XML_INACTIVE if inactive else 0
        return await self._call(lambda c: str(c.networkLookupByName(name).XMLDesc(flags)))

    async def define(self, xml: str) -> None:
        await self._call(lambda c: c.networkDefineXML(xml))

    async def create(self, xml: str) -> None:
        await self._call(lambda c: c.networkCreateXML(xml))

    async def start(self, name: str) -> None:
        await self._call(lambda c: c.networkLookupByName(name).create())

    async def destroy(self, name: str) -> None:
        await self._call(lambda c: c.networkLookupByName(name).destroy())

    async def undefine(self, name: str) -> None:
        await self._call(lambda c: c.networkLookupByName(name).undefine())

    async def set_autostart(self, name: str, enabled: bool) -> None:
        await self._call(lambda c: c.networkLookupByName(name).setAutostart(int(enabled)))

    async def update(self, name: str, action: UpdateAction, section: UpdateSection,
                     parent_index: int, xml: str, live: bool, config: bool) -> None:
        flags = ((libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE if live else 0)
                 | (libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG if config else 0))
        command, sec = _COMMANDS[action], _SECTIONS[section]
        await self._call(
            lambda c: c.networkLookupByName(name).update(command, sec, parent_index, xml, flags))

    # ------------------------------------------------------------ domains (events only)
    @staticmethod
    def _domain(dom: Any) -> DomainState:
        return DomainState(name=dom.name(), uuid=dom.UUIDString(), active=bool(dom.isActive()),
                           interfaces=interfaces_of(dom.XMLDesc(0)))

    async def list_domains(self) -> list[DomainState]:
        def work(conn: Any) -> list[DomainState]:
            out = []
            for dom in conn.listAllDomains(0):
                try:
                    out.append(self._domain(dom))
                except libvirt.libvirtError as exc:  # undefined while we listed it
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
            return out
        return await self._call(work)

    async def get_domain(self, uuid: str) -> DomainState | None:
        def work(conn: Any) -> DomainState | None:
            try:
                return self._domain(conn.lookupByUUIDString(uuid))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise
        return await self._call(work)

    async def domain_definitions(self) -> list[DomainDefinitions]:
        def work(conn: Any) -> list[DomainDefinitions]:
            out = []
            for dom in conn.listAllDomains(0):
                try:
                    xmls = [str(dom.XMLDesc(0))]
                    if dom.isActive() and dom.isPersistent():  # the next boot's definition too
                        xmls.append(str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
                    out.append(DomainDefinitions(str(dom.name()), tuple(xmls)))
                except libvirt.libvirtError as exc:  # undefined while we listed it
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
            return out
        return await self._call(work)
