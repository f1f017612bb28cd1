"""The libvirt adapter: the only module that imports libvirt and libvirtaio.

Every libvirt call that may talk to libvirtd runs in a small thread pool
(run_in_executor), never on the event loop, so a slow `net-start` (firewall
rules, dnsmasq) never stalls other jobs or event publishing. libvirt's own
callbacks (lifecycle events, connection close) are dispatched by libvirtaio on
the loop or on a pool thread; they only hand their facts to the loop with
call_soon_threadsafe. The connection's lifecycle (open, callbacks, keepalive,
close) is driven by the libvirt watcher; handlers only see the VirtBackend calls.

Calls to libvirtd are what a network op costs (each is a round trip, and CPU in
libvirtd and here), so the adapter makes as few as the answer needs:
- a network's handle (name + uuid, what libvirtd looks a network up by) is kept per
  connection once looked up, defined, listed or named by an event; a handle that went
  stale (the network was undefined, or redefined with another uuid) fails with "no
  network", and that call is made once more with a fresh lookup;
- a change the handlers make names the lifecycle event it causes (`_Expected`) before
  it is sent, and settles it with the state the change leads to, from the state the
  handler read just before (`prev`). The watcher publishes that event with that
  state (`event_state`), instead of reading the network again; events of anyone
  else's changes, or of a change whose outcome is not known, are read as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
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
EXPECT_WAIT_SECONDS = 5.0
"""How long an event waits for the change that causes it to return (then: read)."""
EXPECT_KEEP_SECONDS = 60.0
"""A settled expectation whose event never came is dropped after this."""


class _Gone:
    def __repr__(self) -> str:
        return "GONE"


GONE = _Gone()
"""The outcome of a change that leaves no network (a transient one destroyed, an inactive
one undefined)."""
Outcome = NetworkState | _Gone | None
"""A network after a change: its state, GONE, or None: not known (read it)."""
OutcomeT = TypeVar("OutcomeT", bound=Outcome)


@dataclass
class _Expected:
    """A lifecycle event one of vnetd's own changes causes, and the state it leads to."""

    event: str
    outcome: asyncio.Future[Outcome]
    since: float = field(default_factory=time.monotonic)


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
        self._handles: dict[str, Any] = {}
        """The current connection's network handles by name (see the module's doc)."""
        self._expected: dict[str, list[_Expected]] = {}
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

    def _on_net(self, conn: Any, name: str, fn: Callable[[Any], T]) -> T:
        """fn(handle of network `name`), in a pool thread: the kept handle, else (or when
        it went stale) a lookup. Raises libvirtError (VIR_ERR_NO_NETWORK: no such network)."""
        handles = self._handles if conn is self._conn else {}
        net = handles.get(name)
        if net is not None:
            try:
                return fn(net)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                    raise
                handles.pop(name, None)  # stale: undefined, or redefined with another uuid
        net = conn.networkLookupByName(name)
        handles[name] = net
        return fn(net)

    def _keep(self, conn: Any, net: Any) -> None:
        if conn is self._conn:
            self._handles[str(net.name())] = net

    def _forget(self, conn: Any, name: str) -> None:
        if conn is self._conn:
            self._handles.pop(name, None)

    # ------------------------------------------------------------ own changes -> events
    def _expect(self, name: str, event: str) -> asyncio.Future[Outcome]:
        """Before a change is sent: the event it will cause is vnetd's own."""
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._expected.setdefault(name, []).append(_Expected(event, fut))
        return fut

    def _withdraw(self, name: str, fut: asyncio.Future[Outcome]) -> None:
        """The change failed: no event of its own comes."""
        entries = self._expected.get(name, [])
        entries[:] = [e for e in entries if e.outcome is not fut]
        if not entries:
            self._expected.pop(name, None)
        if not fut.done():
            fut.set_result(None)

    async def _own(self, name: str, event: str, work: Callable[[Any], OutcomeT]) -> OutcomeT:
        """Run work(conn) in the pool as a change of network `name` that causes `event`:
        expected before it is sent, withdrawn if it fails, settled with what work
        returned (the state it led to) otherwise."""
        fut = self._expect(name, event)
        try:
            result = await self._call(work)
        except BaseException:
            self._withdraw(name, fut)
            raise
        if not fut.done():
            fut.set_result(result)
        return result

    async def _change(self, name: str, event: str, fn: Callable[[Any], Any],
                      outcome: Callable[[Any, Any], Outcome]) -> None:
        """fn(handle) changes network `name` (causing `event`); outcome(conn, handle),
        called right after in the same pool thread, is the state it led to. Whatever
        outcome raises makes it None (not known), never fails the change."""
        conn = self._conn

        def work(c: Any) -> Outcome:
            net = self._on_net(c, name, lambda n: (fn(n), n)[1])
            try:
                return outcome(c, net)
            except libvirt.libvirtError:
                return None

        if await self._own(name, event, work) is GONE:
            self._forget(conn, name)

    async def event_state(self, name: str, event: str) -> NetworkState | None:
        """The state to publish a lifecycle event of network `name` with (None: it no
        longer exists): the outcome of vnetd's own change that caused it (waiting for that
        change to return, if it has not yet), else read from libvirtd now."""
        entries = self._expected.get(name, [])
        now = time.monotonic()
        entries[:] = [e for e in entries  # settled ones whose event never came
                      if not e.outcome.done() or now - e.since < EXPECT_KEEP_SECONDS]
        mine = next((i for i, e in enumerate(entries) if e.event == event), None)
        outcome: Outcome = None
        if mine is not None:
            entry = entries[mine]
            del entries[:mine + 1]  # older ones came before this event, or never will
            try:
                outcome = await asyncio.wait_for(asyncio.shield(entry.outcome),
                                                 EXPECT_WAIT_SECONDS)
            except TimeoutError:
                outcome = None
        if not entries:
            self._expected.pop(name, None)
        if isinstance(outcome, NetworkState):
            return outcome
        if outcome is GONE:
            return None
        return await self.get_network(name)

    # ------------------------------------------------------------ connection (watcher)
    async def open(self, on_event: Callable[[str, str], None],
                   on_close: Callable[[str], None],
                   keepalive: tuple[int, int] | None = (5, 3),
                   on_domain: DomainCallback | None = None) -> None:
        """Open the connection, register lifecycle + close callbacks and keepalive.

        `on_event(name, "defined"|"undefined"|"started"|"stopped")`, `on_close(reason)`
        and `on_domain` (domain started/stopped, a device added/removed; see
        DomainCallback) are called on the event loop.
        """
        register_event_impl()
        loop = asyncio.get_running_loop()

        handles: dict[str, Any] = {}

        def lifecycle(_conn: Any, net: Any, event: int, _detail: int, _opaque: Any) -> None:
            name = EVENT_NAMES.get(event)
            if name is not None:
                if name in ("defined", "started"):  # the network as it is now
                    handles[str(net.name())] = net
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
                if keepalive is not None:  # (libvirt's test driver has none)
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
        self._handles = handles
        self._drop_expected()
        self._callback_ids = [cb]
        self._domain_callback_ids = dom_cbs

    def _drop_expected(self) -> None:
        """A new (or no) connection: events of earlier changes come no more (the watcher
        rereads everything after a reconnect)."""
        for entries in self._expected.values():
            for e in entries:
                if not e.outcome.done():
                    e.outcome.set_result(None)
        self._expected = {}

    async def close(self) -> None:
        """Drop the connection (after a loss, or at stop); never raises."""
        conn, self._conn = self._conn, None
        self._handles = {}
        self._drop_expected()
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
        # Four calls one after the other, in one pool thread. Made at once from several
        # threads they took longer here: each call's wake-ups then go through the
        # event loop (libvirtaio) and the GIL.
        return NetworkState(
            name=str(net.name()), uuid=str(net.UUIDString()), active=bool(net.isActive()),
            persistent=bool(net.isPersistent()), autostart=bool(net.autostart()),
            xml=str(net.XMLDesc(0)))

    def may_exist(self, name: str) -> bool:
        # The kept handles: every network listed at connect, looked up, defined or named
        # by an event since; one found gone is dropped. Not connected: unknown (True).
        return self._conn is None or name in self._handles

    async def list_networks(self) -> list[NetworkState]:
        def work(conn: Any) -> list[NetworkState]:
            out = []
            for net in conn.listAllNetworks(0):
                try:
                    out.append(self._state(net))
                except libvirt.libvirtError as exc:  # vanished while we listed it
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                        raise
                    continue
                self._keep(conn, net)
            return out
        return await self._call(work)

    async def get_network(self, name: str) -> NetworkState | None:
        def work(conn: Any) -> NetworkState | None:
            try:
                return self._on_net(conn, name, self._state)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                    self._forget(conn, name)
                    return None
                raise
        return await self._call(work)

    async def network_xml(self, name: str, inactive: bool) -> str:
        flags = libvirt.VIR_NETWORK_XML_INACTIVE if inactive else 0
        return await self._call(lambda c: str(self._on_net(c, name,
                                                           lambda n: n.XMLDesc(flags))))

    async def define(self, name: str, xml: str,
                     prev: NetworkState | None = None) -> NetworkState:

        def work(conn: Any) -> NetworkState:
            net = conn.networkDefineXML(xml)
            self._keep(conn, net)
            uuid = str(net.UUIDString())
            # A redefinition keeps the network's activity and autostart; a new network is
            # inactive (had one of that name appeared meanwhile, its other uuid would have
            # made libvirt refuse) and does not autostart. The XML is libvirt's (a bridge
            # name it picked, the uuid...), live while the network runs.
            same = prev is not None and prev.uuid == uuid
            return NetworkState(name=str(net.name()), uuid=uuid,
                                active=prev.active if same and prev else False,
                                persistent=True,
                                autostart=prev.autostart if same and prev else False,
                                xml=str(net.XMLDesc(0)))

        return await self._own(name, "defined", work)

    async def create(self, name: str, xml: str) -> NetworkState:

        def work(conn: Any) -> NetworkState:
            net = conn.networkCreateXML(xml)
            self._keep(conn, net)
            return NetworkState(name=str(net.name()), uuid=str(net.UUIDString()), active=True,
                                persistent=False, autostart=False, xml=str(net.XMLDesc(0)))

        return await self._own(name, "started", work)

    async def start(self, name: str, prev: NetworkState | None = None) -> None:
        # Starting changes no definition: the live one is the one read before (the same
        # summary; libvirt picks a missing bridge name when it defines a network).
        await self._change(name, "started", lambda n: n.create(),
                           lambda _c, _n: None if prev is None else replace(prev, active=True))

    async def destroy(self, name: str, prev: NetworkState | None = None) -> None:
        def outcome(_conn: Any, net: Any) -> Outcome:
            if prev is None:
                return None
            if not prev.persistent:
                return GONE
            # The definition now in force: one made while it ran takes effect now.
            return replace(prev, active=False, xml=str(net.XMLDesc(0)))
        await self._change(name, "stopped", lambda n: n.destroy(), outcome)

    async def undefine(self, name: str, prev: NetworkState | None = None) -> None:
        def outcome(_conn: Any, _net: Any) -> Outcome:
            if prev is None:
                return None
            if not prev.active:
                return GONE
            # Like `virsh net-undefine`: it keeps running, transient, without autostart.
            return replace(prev, persistent=False, autostart=False)
        await self._change(name, "undefined", lambda n: n.undefine(), outcome)

    async def set_autostart(self, name: str, enabled: bool) -> None:
        await self._call(lambda c: self._on_net(c, name, lambda n: n.setAutostart(int(enabled))))

    async def update(self, name: str, action: UpdateAction, section: UpdateSection,
                     parent_index: int, xml: str, live: bool, config: bool) -> None:
        flags = ((libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE if live else 0)
                 | (libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG if config else 0))
        command, sec = _COMMANDS[action], _SECTIONS[section]
        await self._call(lambda c: self._on_net(
            c, name, lambda n: n.update(command, sec, parent_index, xml, flags)))

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
