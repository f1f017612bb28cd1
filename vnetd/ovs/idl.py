"""The OVSDB adapter: the only module (with rows.py) that imports the `ovs` library.

The IDL is not asyncio-native and not thread-safe, so one thread of its own
owns it: it keeps the replica up to date (the IDL's monitor), runs every
transaction, and publishes an immutable OvsState after each change. Coroutines
on the event loop hand it work through a queue and a wake-up pipe and get
their answer through a future; the listener hears of each new picture through
call_soon_threadsafe. Nothing on the loop ever blocks on OVSDB.

A mutating transaction also bumps Open_vSwitch.next_cfg and its answer waits
until ovs-vswitchd reports cur_cfg at least as high (what `ovs-vsctl` does
without --no-wait), so a reply means the bridge or port really exists in the
datapath; if vswitchd does not catch up within the apply timeout, the job
answers `unavailable` and a retry converges.

The IDL reconnects by itself (with backoff); until it is connected, calls
fail at once with OvsError(UNAVAILABLE) rather than wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ovs.db.idl
import ovs.poller
import structlog

from vnetd.ovs.backend import OvsBridge, OvsError, OvsPort, OvsState, Reason, StateListener, Vlan
from vnetd.ovs.rows import Replica, TrackingIdl, bridge_of, fetch_schema, port_of, root_row

log = structlog.get_logger(__name__)

Txn = ovs.db.idl.Transaction
Build = Callable[[ovs.db.idl.Idl, Any], Callable[[], Any]]
"""Adds a transaction's operations; returns what computes the answer after success."""
MAX_ATTEMPTS = 8
SCHEMA_RETRY_MAX = 5.0


@dataclass
class _Request:
    build: Build
    future: asyncio.Future[Any]
    mutating: bool
    attempts: int = 0
    txn: Any = None
    finish: Callable[[], Any] = lambda: None
    """What computes the answer once the transaction succeeded (set by `build`)."""


@dataclass
class _Waiter:
    target: int
    finish: Callable[[], Any]
    future: asyncio.Future[Any]
    deadline: float


@dataclass
class _Shared:
    """Facts the thread writes and the loop reads (single assignments: no lock needed)."""

    state: str = "connecting"
    last_error: str | None = "not connected yet"
    picture: OvsState | None = None
    reconnects: int = 0
    connected_at: float | None = None
    counters: dict[str, int] = field(default_factory=dict)


class IdlBackend:
    """OvsBackend over the OVSDB IDL, on a thread of its own."""

    def __init__(self, remote: str, *, apply_timeout: float = 10.0,
                 probe_interval: float = 5.0) -> None:
        self.remote = remote
        self.apply_timeout = apply_timeout
        self.probe_interval_ms = int(probe_interval * 1000)
        self.shared = _Shared()
        self._listeners: list[StateListener] = []
        self._state_listeners: list[Callable[[str, str | None], None]] = []
        self._inbox: deque[_Request] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ facts
    @property
    def state(self) -> str:
        return self.shared.state

    @property
    def last_error(self) -> str | None:
        return self.shared.last_error

    def listen(self, listener: StateListener) -> None:
        """`listener(picture, reconnected)` on the loop after each change of the replica."""
        self._listeners.append(listener)

    def listen_state(self, listener: Callable[[str, str | None], None]) -> None:
        """`listener(state, error)` on the loop when the connection state changes."""
        self._state_listeners.append(listener)

    # ------------------------------------------------------------ lifecycle (loop side)
    async def run(self) -> None:
        """Run the IDL thread until cancelled (a supervised task: vnetd.supervisor).

        The thread ending by itself is a failure, raised here so the task tree
        logs it, degrades the daemon and starts a new thread after its backoff.
        """
        loop = self._loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def main() -> None:
            try:
                self._main()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    loop.call_soon_threadsafe(_settle_now, ended)

        self._stopping.clear()
        self._thread = threading.Thread(target=main, name="ovsdb-idl", daemon=True)
        self._thread.start()
        try:
            await asyncio.shield(ended)
        except asyncio.CancelledError:
            self._stopping.set()
            self._wake()
            await asyncio.to_thread(self._thread.join, 5.0)
            raise
        raise RuntimeError(f"the OVSDB thread ended: {self.shared.last_error}")

    def close(self) -> None:
        """Release the wake-up pipe, once the thread has stopped for good."""
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    async def _submit(self, build: Build, *, mutating: bool = True) -> Any:
        if self.shared.state != "connected":
            raise OvsError(Reason.UNAVAILABLE, self._unavailable())
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inbox.append(_Request(build, future, mutating))
        self._wake()
        return await future

    def _unavailable(self) -> str:
        return (f"no connection to ovsdb-server at {self.remote}: "
                f"{self.shared.last_error or 'connecting'}")

    # ------------------------------------------------------------ OvsBackend
    async def snapshot(self) -> OvsState:
        picture = self.shared.picture
        if picture is None:
            raise OvsError(Reason.UNAVAILABLE, self._unavailable())
        if self.shared.state != "connected":
            raise OvsError(Reason.UNAVAILABLE, self._unavailable())
        return picture

    async def add_bridge(self, name: str, datapath_type: str,
                         external_ids: Mapping[str, str]) -> OvsBridge:
        ids = dict(external_ids)

        def build(idl: ovs.db.idl.Idl, txn: Any) -> Callable[[], OvsBridge]:
            root = _require_root(idl)
            iface = txn.insert(idl.tables["Interface"])
            iface.name = name
            iface.type = "internal"
            iface.external_ids = ids
            port = txn.insert(idl.tables["Port"])
            port.name = name
            port.interfaces = [iface]
            port.external_ids = ids
            br = txn.insert(idl.tables["Bridge"])
            br.name = name
            br.ports = [port]
            br.datapath_type = datapath_type
            br.external_ids = ids
            root.addvalue("bridges", br)
            local = br.uuid
            return lambda: bridge_of(_row(idl, "Bridge", str(txn.get_insert_uuid(local))))

        result: OvsBridge = await self._submit(build)
        return result

    async def delete_bridge(self, uuid: str, external_ids: Mapping[str, str]) -> None:
        def build(idl: ovs.db.idl.Idl, txn: Any) -> Callable[[], None]:
            br = _row(idl, "Bridge", uuid)
            _verify_ids(br, external_ids)
            _require_root(idl).delvalue("bridges", br)
            for port in br.ports:
                for iface in port.interfaces:
                    iface.delete()
                port.delete()
            br.delete()
            return lambda: None

        await self._submit(build)

    async def add_port(self, bridge_uuid: str, name: str, vlan: Vlan,
                       external_ids: Mapping[str, str]) -> OvsPort:
        ids = dict(external_ids)

        def build(idl: ovs.db.idl.Idl, txn: Any) -> Callable[[], OvsPort]:
            br = _row(idl, "Bridge", bridge_uuid)
            br.verify("name")
            bridge_name = str(br.name)
            iface = txn.insert(idl.tables["Interface"])
            iface.name = name
            iface.external_ids = ids
            port = txn.insert(idl.tables["Port"])
            port.name = name
            port.interfaces = [iface]
            port.external_ids = ids
            _write_vlan(port, vlan)
            br.addvalue("ports", port)
            local = port.uuid
            return lambda: port_of(_row(idl, "Port", str(txn.get_insert_uuid(local))),
                                   bridge_name)

        result: OvsPort = await self._submit(build)
        return result

    async def set_port_vlan(self, uuid: str, vlan: Vlan) -> OvsPort:
        def build(idl: ovs.db.idl.Idl, txn: Any) -> Callable[[], OvsPort]:
            port = _row(idl, "Port", uuid)
            _write_vlan(port, vlan)
            return lambda: port_of(_row(idl, "Port", uuid), _bridge_name_of(idl, uuid))

        result: OvsPort = await self._submit(build)
        return result

    async def delete_port(self, uuid: str, external_ids: Mapping[str, str]) -> None:
        def build(idl: ovs.db.idl.Idl, txn: Any) -> Callable[[], None]:
            port = _row(idl, "Port", uuid)
            _verify_ids(port, external_ids)
            for br in idl.tables["Bridge"].rows.values():
                if any(p.uuid == port.uuid for p in br.ports):
                    br.delvalue("ports", port)
            for iface in port.interfaces:
                iface.delete()
            port.delete()
            return lambda: None

        await self._submit(build)

    # ------------------------------------------------------------ the thread
    def _main(self) -> None:
        try:
            idl = self._connect()
            if idl is not None:
                try:
                    self._serve(idl)
                finally:
                    idl.close()
        except Exception as exc:  # a dead thread must be visible, not silent
            log.exception("ovsdb_thread_failed")
            self._set_state("degraded", f"the OVSDB thread failed: {type(exc).__name__}: {exc}")
        finally:
            self._fail_all(OvsError(Reason.UNAVAILABLE, "the OVSDB client stopped"))

    def _connect(self) -> TrackingIdl | None:
        """Fetch the schema (retrying with backoff) and open the IDL; None when stopping."""
        delay = 0.1
        while not self._stopping.is_set():
            try:
                helper = fetch_schema(self.remote, timeout=5.0)
                return TrackingIdl(self.remote, helper, probe_interval=self.probe_interval_ms)
            except OvsError as exc:
                self._set_state("degraded", exc.message)
            self._fail_all(OvsError(Reason.UNAVAILABLE, self._unavailable()))
            self._stopping.wait(delay)
            delay = min(delay * 2, SCHEMA_RETRY_MAX)
        return None

    def _serve(self, idl: TrackingIdl) -> None:
        pending: list[_Request] = []
        waiters: list[_Waiter] = []
        seqno = -1
        replica = Replica()
        was_connected = False
        ever = self.shared.picture is not None  # a restarted thread: its first picture resyncs
        while not self._stopping.is_set():
            idl.run()
            connected = idl._session.is_connected() and idl.state == idl.IDL_S_MONITORING
            pending = self._progress(idl, pending, waiters)
            reconnected = False
            if connected and not was_connected:
                reconnected = ever
                ever = True
                if reconnected:
                    self.shared.reconnects += 1
            if connected and not was_connected:
                replica.rebuild(idl)  # the IDL reread everything: so do we
                seqno = -1
            if idl.change_seqno != seqno or reconnected:
                seqno = idl.change_seqno
                replica.apply(idl)
                if idl.has_ever_connected():
                    self._publish(replica.state(idl), reconnected)
            if connected != was_connected:
                self._set_state("connected" if connected else "degraded",
                                None if connected else
                                "connection to ovsdb-server lost; reconnecting")
                was_connected = connected
            self._settle_waiters(idl, waiters)
            while self._inbox:
                request = self._inbox.popleft()
                if not connected:
                    _fail(request.future, OvsError(Reason.UNAVAILABLE, self._unavailable()))
                else:
                    self._begin(idl, request, pending, waiters)
            poller = ovs.poller.Poller()
            idl.wait(poller)
            for request in pending:
                request.txn.wait(poller)
            poller.fd_wait(self._wake_r, ovs.poller.POLLIN)
            if waiters:
                left = min(w.deadline for w in waiters) - time.monotonic()
                poller.timer_wait(max(1, int(left * 1000)))
            else:
                poller.timer_wait(1000)
            poller.block()
            with contextlib.suppress(BlockingIOError, OSError):
                os.read(self._wake_r, 4096)

    def _begin(self, idl: ovs.db.idl.Idl, request: _Request, pending: list[_Request],
               waiters: list[_Waiter]) -> None:
        request.attempts += 1
        txn = Txn(idl)
        try:
            request.finish = request.build(idl, txn)
            if request.mutating:
                root = root_row(idl)
                if root is not None:
                    root.increment("next_cfg")
        except OvsError as exc:
            txn.abort()
            _fail(request.future, exc)
            return
        except Exception as exc:  # one bad transaction must not end the thread
            txn.abort()
            log.exception("ovsdb_transaction_build_failed")
            _fail(request.future, OvsError(Reason.FAILED, f"{type(exc).__name__}: {exc}"))
            return
        request.txn = txn
        status = txn.commit()
        self._after(idl, request, status, pending, waiters)

    def _progress(self, idl: ovs.db.idl.Idl, pending: list[_Request],
                  waiters: list[_Waiter]) -> list[_Request]:
        still: list[_Request] = []
        for request in pending:
            self._after(idl, request, request.txn.commit(), still, waiters)
        return still

    def _after(self, idl: ovs.db.idl.Idl, request: _Request, status: str,
               pending: list[_Request], waiters: list[_Waiter]) -> None:
        if status == Txn.INCOMPLETE:
            pending.append(request)
            return
        if status in (Txn.SUCCESS, Txn.UNCHANGED):
            if not request.mutating:
                _answer(request.future, request.finish)
                return
            if status == Txn.SUCCESS:
                target = int(request.txn.get_increment_new_value())
            else:  # nothing changed: still wait until vswitchd applied what is there
                root = root_row(idl)
                target = int(root.next_cfg) if root is not None else 0
            # The answer is read once vswitchd has applied it (ofport, link state known).
            waiters.append(_Waiter(target, request.finish, request.future,
                                   time.monotonic() + self.apply_timeout))
            return
        if status == Txn.TRY_AGAIN and request.attempts < MAX_ATTEMPTS:
            self._inbox.append(request)  # composed again on the next turn, on a fresh replica
            return
        if status == Txn.TRY_AGAIN:
            _fail(request.future, OvsError(Reason.UNAVAILABLE,
                                           "OVSDB transaction kept failing (try again)"))
            return
        error = str(request.txn.get_error())
        reason = Reason.CONFLICT if "constraint" in error or "referential" in error \
            else Reason.FAILED
        _fail(request.future, OvsError(reason, f"OVSDB transaction failed: {error}"))

    def _settle_waiters(self, idl: ovs.db.idl.Idl, waiters: list[_Waiter]) -> None:
        if not waiters:
            return
        root = root_row(idl)
        cur = int(root.cur_cfg) if root is not None else 0
        now = time.monotonic()
        keep: list[_Waiter] = []
        for w in waiters:
            if cur >= w.target:
                _answer(w.future, w.finish)
            elif now >= w.deadline:
                _fail(w.future, OvsError(
                    Reason.UNAVAILABLE,
                    f"ovs-vswitchd has not applied the change within {self.apply_timeout:g}s "
                    f"(cur_cfg {cur} < {w.target}): is ovs-vswitchd running?"))
            else:
                keep.append(w)
        waiters[:] = keep

    # ------------------------------------------------------------ thread -> loop
    def _set_state(self, state: str, error: str | None) -> None:
        changed = state != self.shared.state
        self.shared.state = state
        self.shared.last_error = error
        if state == "connected":
            self.shared.connected_at = time.time()
        if changed:
            log.info("ovsdb_state", state=state, remote=self.remote, error=error)
            loop = self._loop
            if loop is not None and not loop.is_closed():
                for listener in self._state_listeners:
                    with contextlib.suppress(RuntimeError):  # the loop is closing
                        loop.call_soon_threadsafe(listener, state, error)

    def _publish(self, picture: OvsState, reconnected: bool) -> None:
        if picture == self.shared.picture and not reconnected:
            return  # e.g. only cur_cfg moved: nothing vnetd shows changed
        self.shared.picture = picture
        self._notify(picture, reconnected)

    def _notify(self, picture: OvsState, reconnected: bool) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for listener in self._listeners:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(listener, picture, reconnected)

    def _fail_all(self, exc: OvsError) -> None:
        while self._inbox:
            _fail(self._inbox.popleft().future, exc)


# ---------------------------------------------------------------- helpers (IDL thread)
def _row(idl: ovs.db.idl.Idl, table: str, uuid: str) -> Any:
    row = idl.tables[table].rows.get(uuidlib.UUID(uuid))
    if row is None:
        raise OvsError(Reason.NOT_FOUND, f"{table} row {uuid} is gone")
    return row


def _require_root(idl: ovs.db.idl.Idl) -> Any:
    root = root_row(idl)
    if root is None:
        raise OvsError(Reason.UNAVAILABLE,
                       "the Open_vSwitch table is empty: the database was never initialised "
                       "(ovs-vsctl init / ovs-ctl start)")
    return root


def _verify_ids(row: Any, expected: Mapping[str, str]) -> None:
    have = dict(row.external_ids)
    if any(have.get(k) != v for k, v in expected.items()):
        raise OvsError(Reason.CHANGED, f"{row.name} no longer carries {dict(expected)}")
    row.verify("external_ids")  # and the server checks it is still so when it commits


def _write_vlan(port: Any, vlan: Vlan) -> None:
    port.tag = [vlan.tag] if vlan.tag is not None else []
    port.trunks = list(vlan.trunks)
    port.vlan_mode = [vlan.mode] if vlan.mode is not None else []


def _bridge_name_of(idl: ovs.db.idl.Idl, port_uuid: str) -> str | None:
    wanted = uuidlib.UUID(port_uuid)
    for br in idl.tables["Bridge"].rows.values():
        if any(p.uuid == wanted for p in br.ports):
            return str(br.name)
    return None


def _settle_now(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _answer(future: asyncio.Future[Any], finish: Callable[[], Any]) -> None:
    try:
        value = finish()
    except OvsError as exc:
        _fail(future, exc)
        return
    _settle(future, value)


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    loop = future.get_loop()

    def done() -> None:
        if not future.done():
            future.set_result(value)

    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(done)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    loop = future.get_loop()

    def done() -> None:
        if not future.done():
            future.set_exception(exc)

    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(done)
