"""LibvirtBackend against libvirt's own in-process test driver (`test:///default`, no
libvirtd): kept network handles, and lifecycle events of vnetd's own changes published
with the state the change led to, without reading the network again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import libvirt
import pytest
import pytest_asyncio

from tests.support.wait import until
from vnetd.handlers.network import view
from vnetd.virt.backend import NetworkState, VirtError
from vnetd.virt.libvirt_backend import LibvirtBackend

URI = "test:///default"
# libvirt takes one event loop implementation per process, for good: these tests share
# one asyncio loop (libvirtaio is registered on it).
pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Opened:
    backend: LibvirtBackend
    events: list[tuple[str, str]] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)
    """Names get_network was asked for: each is a round of calls to libvirtd."""

    async def event(self, name: str, event: str) -> None:
        await until(lambda: (name, event) in self.events, f"the {event} event of {name}", 5.0)


@pytest_asyncio.fixture(loop_scope="module")
async def opened(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Opened]:
    backend = LibvirtBackend(URI)
    o = Opened(backend)
    real = backend.get_network

    async def counted(name: str) -> NetworkState | None:
        o.reads.append(name)
        return await real(name)

    monkeypatch.setattr(backend, "get_network", counted)
    await backend.open(lambda name, event: o.events.append((name, event)), lambda _r: None,
                       keepalive=None)
    try:
        yield o
    finally:
        await backend.close()
        backend.shutdown()


def _xml(name: str, uuid: str | None = None) -> str:
    u = f"<uuid>{uuid}</uuid>" if uuid else ""
    return f"<network><name>{name}</name>{u}<bridge name='vb{name}' stp='off'/></network>"


def _facts(state: NetworkState | None) -> dict[str, Any] | None:
    return None if state is None else view(state)


async def test_own_lifecycle_events_carry_the_state_without_a_read(opened: Opened) -> None:
    b, name = opened.backend, "bk-own"
    state = await b.define(name, _xml(name))
    await opened.event(name, "defined")
    got = await b.event_state(name, "defined")
    assert opened.reads == []  # the define's own outcome, no second look
    fresh = await opened.backend.get_network(name)
    assert _facts(got) == _facts(fresh) == _facts(state)
    assert got is not None and (got.active, got.persistent, got.autostart) == (False, True, False)
    opened.reads.clear()

    await b.start(name, state)
    await opened.event(name, "started")
    got = await b.event_state(name, "started")
    await b.destroy(name, replace(state, active=True))
    await opened.event(name, "stopped")
    stopped = await b.event_state(name, "stopped")
    await b.undefine(name, replace(state, active=False))
    await opened.event(name, "undefined")
    gone = await b.event_state(name, "undefined")
    assert opened.reads == []
    assert got is not None and got.active and got.persistent
    assert stopped is not None and not stopped.active and stopped.persistent
    assert gone is None
    assert await opened.backend.get_network(name) is None
    assert b._expected == {}  # every expectation met


async def test_events_of_other_changes_are_read(opened: Opened) -> None:
    b, name = opened.backend, "bk-other"
    other = await asyncio.to_thread(libvirt.open, URI)
    try:
        net = await asyncio.to_thread(other.networkDefineXML, _xml(name))
        await opened.event(name, "defined")
        got = await b.event_state(name, "defined")
        assert opened.reads == [name]
        assert got is not None and got.uuid == net.UUIDString() and got.persistent
        # A change of vnetd's that failed causes no event: nothing is left expected.
        await asyncio.to_thread(net.create)
        with pytest.raises(VirtError):  # already running
            await b.start(name, got)
        assert name not in b._expected
        await opened.event(name, "started")
        opened.reads.clear()
        started = await b.event_state(name, "started")
        assert opened.reads == [name] and started is not None and started.active
        await asyncio.to_thread(net.destroy)
        await asyncio.to_thread(net.undefine)
    finally:
        await asyncio.to_thread(other.close)


async def test_a_stale_handle_is_looked_up_again(opened: Opened) -> None:
    b, name = opened.backend, "bk-stale"
    first = await b.define(name, _xml(name))
    assert b.may_exist(name) and not b.may_exist("bk-never-seen")
    other = await asyncio.to_thread(libvirt.open, URI)
    try:
        # Someone else replaces the network (another uuid): the kept handle is stale.
        old = await asyncio.to_thread(other.networkLookupByName, name)
        await asyncio.to_thread(old.undefine)
        uuid = "5a1e0000-0000-4000-8000-000000000001"
        await asyncio.to_thread(other.networkDefineXML, _xml(name, uuid))
        got = await opened.backend.get_network(name)
        assert got is not None and got.uuid == uuid != first.uuid
        await b.undefine(name, got)
        assert await opened.backend.get_network(name) is None
        assert not b.may_exist(name)
    finally:
        await asyncio.to_thread(other.close)


async def test_an_event_waits_for_the_change_that_causes_it(opened: Opened,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """The event may be handled before the change returns: it waits for its outcome."""
    b, name = opened.backend, "bk-wait"
    state = await b.define(name, _xml(name))
    await opened.event(name, "defined")
    await b.event_state(name, "defined")
    release = asyncio.Event()
    real_call = b._call

    async def slow(fn: Any) -> Any:
        result = await real_call(fn)
        await release.wait()  # the change is done in libvirt, not yet returned
        return result

    monkeypatch.setattr(b, "_call", slow)
    start = asyncio.ensure_future(b.start(name, state))
    await opened.event(name, "started")
    waiting = asyncio.ensure_future(b.event_state(name, "started"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    release.set()
    await start
    got = await waiting
    assert got is not None and got.active and opened.reads == []
    monkeypatch.setattr(b, "_call", real_call)
    await b.destroy(name, got)
    await b.undefine(name, replace(got, active=False))
