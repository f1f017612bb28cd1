"""network.* handlers over a small fake of the VirtBackend Protocol, and the libvirt
watcher's event/resync logic over a fake connection with a recording EventSink."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from tests.support.wait import until
from tests.unit.fakes import FakeNet, RecordingSink
from vnetd.contract.commands import parse_request
from vnetd.contract.errors import VnetdError
from vnetd.handlers.context import Context
from vnetd.handlers.dispatch import Dispatcher
from vnetd.handlers.policy import Policy
from vnetd.handlers.registry import build_registry
from vnetd.virt.backend import (
    DomainDefinitions,
    DomainState,
    NetworkState,
    Reason,
    UpdateAction,
    UpdateSection,
    VirtBackend,
    VirtError,
)
from vnetd.watchers.libvirt import LibvirtWatcher


@dataclass
class FakeVirt:
    """In-memory libvirt: defined (config) and live definitions per network."""

    adopt_unowned: bool = False
    nets: dict[str, NetworkState] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    up: bool = True
    fail_start: VirtError | None = None
    domains: dict[str, DomainState] = field(default_factory=dict)  # by uuid
    definitions: list[DomainDefinitions] = field(default_factory=list)  # what cleanup reads
    _n: int = 0

    @property
    def connected(self) -> bool:
        return self.up

    def _check(self) -> None:
        if not self.up:
            raise VirtError(Reason.UNAVAILABLE, "connection closed")

    def _get(self, name: str) -> NetworkState:
        if name not in self.nets:
            raise VirtError(Reason.NOT_FOUND, f"no network {name}")
        return self.nets[name]

    def _uuid_of(self, text: str) -> str:
        u = ET.fromstring(text).findtext("uuid")
        if u:
            return u
        self._n += 1
        return f"00000000-0000-4000-8000-{self._n:012d}"

    def may_exist(self, name: str) -> bool:
        return name in self.nets

    async def list_networks(self) -> list[NetworkState]:
        self._check()
        return list(self.nets.values())

    async def get_network(self, name: str) -> NetworkState | None:
        self._check()
        return self.nets.get(name)

    async def network_xml(self, name: str, inactive: bool) -> str:
        self._check()
        return self._get(name).xml

    async def define(self, name: str, xml: str,
                     prev: NetworkState | None = None) -> NetworkState:
        self._check()
        assert name == ET.fromstring(xml).findtext("name")
        self.calls.append(("define", name))
        old = self.nets.get(name)
        uuid = self._uuid_of(xml)
        if old is not None and old.uuid != uuid:
            raise VirtError(Reason.CONFLICT, "network exists with another uuid")
        root = ET.fromstring(xml)
        if root.find("uuid") is None:
            u = ET.Element("uuid")
            u.text = uuid
            root.insert(1, u)
        self.nets[name] = NetworkState(name, uuid, old.active if old else False, True,
                                       old.autostart if old else False,
                                       ET.tostring(root, encoding="unicode"))
        return self.nets[name]

    async def create(self, name: str, xml: str) -> NetworkState:
        self._check()
        assert name == ET.fromstring(xml).findtext("name")
        self.calls.append(("create", name))
        self.nets[name] = NetworkState(name, self._uuid_of(xml), True, False, False, xml)
        return self.nets[name]

    async def start(self, name: str, prev: NetworkState | None = None) -> None:
        self._check()
        self.calls.append(("start", name))
        if self.fail_start is not None:
            raise self.fail_start
        self.nets[name] = replace(self._get(name), active=True)

    async def destroy(self, name: str, prev: NetworkState | None = None) -> None:
        self._check()
        self.calls.append(("destroy", name))
        st = self._get(name)
        if st.persistent:
            self.nets[name] = replace(st, active=False)
        else:
            del self.nets[name]

    async def undefine(self, name: str, prev: NetworkState | None = None) -> None:
        self._check()
        self.calls.append(("undefine", name))
        st = self._get(name)
        if st.active:
            self.nets[name] = replace(st, persistent=False, autostart=False)
        else:
            del self.nets[name]

    async def list_domains(self) -> list[DomainState]:
        self._check()
        return list(self.domains.values())

    async def get_domain(self, uuid: str) -> DomainState | None:
        self._check()
        return self.domains.get(uuid)

    async def domain_definitions(self) -> list[DomainDefinitions]:
        self._check()
        return list(self.definitions)

    async def set_autostart(self, name: str, enabled: bool) -> None:
        self._check()
        self.calls.append(("autostart", name))
        self.nets[name] = replace(self._get(name), autostart=enabled)

    async def update(self, name: str, action: UpdateAction, section: UpdateSection,
                     parent_index: int, xml: str, live: bool, config: bool) -> None:
        self._check()
        self.calls.append((f"update-{action}-{'live' if live else 'config'}", name))
        st = self._get(name)
        root = ET.fromstring(st.xml)
        ip = root.findall("ip")[parent_index]
        dhcp = ip.find("dhcp")
        if dhcp is None:
            dhcp = ET.SubElement(ip, "dhcp")
        el = ET.fromstring(xml)
        same = [h for h in dhcp if h.tag == el.tag and (
            h.get("mac") == el.get("mac") if el.tag == "host" else h.attrib == el.attrib)]
        if action in ("delete", "modify"):
            for h in same:
                dhcp.remove(h)
        if action in ("add", "modify"):
            dhcp.append(el)
        # live and config are one definition in this fake: apply once.
        if live or not st.active:
            self.nets[name] = replace(st, xml=ET.tostring(root, encoding="unicode"))


def _satisfies(v: FakeVirt) -> VirtBackend:
    return v


NAT = {"kind": "nat", "bridge": {"name": "virbr-n1"},
       "ipv4": {"address": "192.168.150.1", "prefix": 24,
                "dhcp": {"ranges": [{"start": "192.168.150.10", "end": "192.168.150.50"}]}}}
FOREIGN = ("<network><name>default</name><uuid>11111111-1111-4111-8111-111111111111</uuid>"
           "<forward mode='nat'/><bridge name='virbr0'/>"
           "<ip address='192.168.122.1' prefix='24'/></network>")

Call = Callable[..., Any]


@pytest.fixture
def virt() -> FakeVirt:
    return FakeVirt()


@pytest.fixture
def vnet() -> FakeNet:
    net = FakeNet()
    net.add("br-host", "bridge")
    net.add("eth1")
    return net


@pytest.fixture
def vctx(vnet: FakeNet, virt: FakeVirt) -> Context:
    return Context(host_id="hv1", net=vnet, policy=Policy(), version="t", virt=virt)


@pytest.fixture
def run(vctx: Context) -> Call:
    d = Dispatcher(build_registry(), vctx)

    async def call(op: str, **args: Any) -> dict[str, Any]:
        return await d.execute(parse_request({"op": op, "args": args}))

    return call


async def error(run: Call, op: str, **args: Any) -> dict[str, Any]:
    with pytest.raises(VnetdError) as info:
        await run(op, **args)
    return info.value.to_dict()


async def test_define_twice_is_no_change(run: Call, virt: FakeVirt) -> None:
    first = await run("network.define", name="n1", spec=NAT, start=True, autostart=True)
    assert (first["created"], first["changed"], first["active"], first["autostart"]) == (
        True, True, True, True)
    assert first["owned"] is True
    assert first["kind"] == "nat"
    calls = list(virt.calls)
    again = await run("network.define", name="n1", spec=NAT, start=True, autostart=True)
    assert (again["created"], again["changed"]) == (False, False)
    assert virt.calls == calls  # nothing sent to libvirt
    assert again["uuid"] == first["uuid"]


async def test_different_definition_conflicts_unless_replace(run: Call, virt: FakeVirt) -> None:
    await run("network.define", name="n1", spec=NAT, start=True)
    other = {**NAT, "mtu": 1400}
    err = await error(run, "network.define", name="n1", spec=other)
    assert err["code"] == "conflict"
    assert "replace" in err["message"]
    uuid = virt.nets["n1"].uuid
    res = await run("network.define", name="n1", spec=other, replace=True)
    assert (res["changed"], res["restarted"], res["active"]) == (True, True, True)
    assert res["uuid"] == uuid
    assert "<mtu size=\"1400\" />" in virt.nets["n1"].xml or "mtu" in virt.nets["n1"].xml
    assert virt.calls[-3:] == [("define", "n1"), ("destroy", "n1"), ("start", "n1")]


async def test_unowned_network_is_forbidden(run: Call, virt: FakeVirt) -> None:
    await virt.define("default", FOREIGN)
    await virt.start("default")
    virt.calls.clear()
    for op in ("network.destroy", "network.undefine"):
        err = await error(run, op, name="default")
        assert err["code"] == "forbidden"
        assert "adopt_unowned" in err["message"]
    assert (await error(run, "network.autostart", name="default", enabled=True))["code"] == \
        "forbidden"
    assert (await error(run, "network.update", name="default", action="add",
                        host={"mac": "52:54:00:00:00:01", "ip": "192.168.122.5"}))["code"] == \
        "forbidden"
    err = await error(run, "network.define", name="default", spec=NAT, replace=True)
    assert err["code"] == "forbidden"
    assert virt.calls == []
    # Reading is always allowed.
    listed = await run("network.list")
    assert listed["networks"][0]["owned"] is False
    assert "virbr0" in (await run("network.dumpxml", name="default"))["xml"]


async def test_adopt_unowned_allows(run: Call, virt: FakeVirt) -> None:
    virt.adopt_unowned = True
    await virt.define("default", FOREIGN)
    await virt.start("default")
    assert (await run("network.destroy", name="default"))["destroyed"] is True
    assert (await run("network.undefine", name="default"))["undefined"] is True
    assert virt.nets == {}


async def test_lifecycle_is_idempotent(run: Call, virt: FakeVirt) -> None:
    await run("network.define", name="n1", spec=NAT)
    assert (await run("network.start", name="n1"))["changed"] is True
    assert (await run("network.start", name="n1"))["changed"] is False
    assert (await run("network.autostart", name="n1", enabled=True))["changed"] is True
    assert (await run("network.autostart", name="n1", enabled=True))["changed"] is False
    assert (await run("network.destroy", name="n1"))["destroyed"] is True
    assert (await run("network.destroy", name="n1"))["destroyed"] is False
    assert (await run("network.undefine", name="n1"))["undefined"] is True
    again = await run("network.undefine", name="n1")
    assert (again["undefined"], again["active"]) == (False, False)
    assert (await error(run, "network.start", name="n1"))["code"] == "not_found"
    assert (await error(run, "network.dumpxml", name="n1"))["code"] == "not_found"


async def test_transient_create(run: Call, virt: FakeVirt) -> None:
    res = await run("network.create", name="t1", spec=NAT)
    assert (res["created"], res["active"], res["persistent"]) == (True, True, False)
    assert (await run("network.create", name="t1", spec=NAT))["changed"] is False
    assert (await error(run, "network.create", name="t1",
                        spec={**NAT, "mtu": 1400}))["code"] == "conflict"
    assert (await error(run, "network.autostart", name="t1", enabled=True))["code"] == \
        "conflict"
    assert (await run("network.destroy", name="t1"))["exists"] is False
    assert "t1" not in virt.nets


async def test_transient_create_with_ttl_marks_expiry(run: Call, virt: FakeVirt) -> None:
    import time

    from vnetd.virt.references import expires_of
    before = time.time()
    await run("network.create", name="t2", spec=NAT, ttl_seconds=600)
    expires = expires_of(await virt.get_network("t2"))  # type: ignore[arg-type]
    assert expires is not None and before + 599 <= expires <= time.time() + 601
    await run("network.create", name="t3", spec=NAT)
    assert expires_of(await virt.get_network("t3")) is None  # type: ignore[arg-type]
    assert (await error(run, "network.create", name="t4", spec=NAT,
                        ttl_seconds=0))["code"] == "invalid_argument"


async def test_raw_xml_checked_before_any_effect(run: Call, virt: FakeVirt) -> None:
    err = await error(run, "network.define", name="x1",
                      xml="<!DOCTYPE n [<!ENTITY e 'x'>]><network><name>x1</name></network>")
    assert err["code"] == "invalid_argument"
    err = await error(run, "network.define", name="x1", xml="<network><name>x2</name></network>")
    assert err["code"] == "invalid_argument"
    assert virt.calls == []
    res = await run("network.define", name="x1",
                    xml="<network><name>x1</name><bridge name='vbx1'/></network>")
    assert (res["owned"], res["kind"], res["bridge"]) == (True, "isolated", "vbx1")


async def test_unavailable_and_disabled(run: Call, virt: FakeVirt, vctx: Context) -> None:
    virt.up = False
    err = await error(run, "network.list")
    assert err["code"] == "unavailable"
    assert "libvirtd is unreachable" in err["message"]
    vctx.virt = None
    err = await error(run, "network.start", name="n1")
    assert err["code"] == "unavailable"
    assert "disabled" in err["message"]


async def test_runtime_checks_before_start(run: Call, virt: FakeVirt) -> None:
    err = await error(run, "network.define", name="b1", spec={"kind": "bridge", "bridge": "nope"},
                      start=True)
    assert err["code"] == "not_found"
    err = await error(run, "network.define", name="b2", spec={"kind": "bridge", "bridge": "eth1"},
                      start=True)
    assert err["code"] == "conflict"
    err = await error(run, "network.define", name="o1", spec={"kind": "ovs", "bridge": "ovsbr0"},
                      start=True)
    assert err["code"] == "unsupported"
    assert "Open vSwitch" in err["message"]
    err = await error(run, "network.define", name="m1",
                      spec={"kind": "macvtap", "devices": ["eth1", "eth7"]}, start=True)
    assert err["code"] == "not_found"
    assert "eth7" in err["message"]
    assert virt.calls == []  # nothing defined for any of them
    res = await run("network.define", name="b3", spec={"kind": "bridge", "bridge": "br-host"},
                    start=True)
    assert (res["active"], res["kind"], res["bridge"]) == (True, "bridge", "br-host")
    res = await run("network.define", name="m2", spec={"kind": "macvtap", "devices": ["eth1"]},
                    start=True)
    assert res["active"] is True
    # Defining (without start) an unrunnable kind is fine: the XML is valid.
    assert (await run("network.define", name="o1", spec={"kind": "ovs", "bridge": "ovsbr0"})
            )["active"] is False
    assert (await error(run, "network.start", name="o1"))["code"] == "unsupported"


async def test_libvirt_failure_of_device_kinds_is_unsupported(run: Call, virt: FakeVirt) -> None:
    virt.fail_start = VirtError(Reason.FAILED, "No usable Vf's present on SRIOV PF eth1", 1)
    err = await error(run, "network.define", name="h1", spec={"kind": "hostdev", "pf": "eth1"},
                      start=True)
    assert err["code"] == "unsupported"
    assert "SRIOV" in err["message"]
    err = await error(run, "network.define", name="n1", spec=NAT, start=True)
    assert err["code"] == "conflict"  # not a device kind: libvirt refused the change


async def test_update_dhcp_host_converges(run: Call, virt: FakeVirt) -> None:
    await run("network.define", name="n1", spec=NAT, start=True)
    host = {"mac": "52:54:00:00:00:07", "ip": "192.168.150.7", "name": "g7"}
    res = await run("network.update", name="n1", action="add", host=host)
    assert res["changed"] is True
    assert res["applied"] == ["live"] or res["applied"] == ["live", "config"]
    assert "52:54:00:00:00:07" in virt.nets["n1"].xml
    assert (await run("network.update", name="n1", action="add", host=host))["changed"] is False
    err = await error(run, "network.update", name="n1", action="add",
                      host={**host, "ip": "192.168.150.8"})
    assert err["code"] == "conflict"
    res = await run("network.update", name="n1", action="modify",
                    host={**host, "ip": "192.168.150.8"})
    assert res["changed"] is True
    assert "192.168.150.8" in virt.nets["n1"].xml
    assert (await run("network.update", name="n1", action="delete", host=host))["changed"] is True
    assert "52:54:00:00:00:07" not in virt.nets["n1"].xml
    assert (await run("network.update", name="n1", action="delete", host=host))["changed"] is False
    err = await error(run, "network.update", name="n1", action="modify", host=host)
    assert err["code"] == "not_found"
    rng = {"start": "192.168.150.100", "end": "192.168.150.110"}
    assert (await run("network.update", name="n1", action="add", range=rng))["changed"] is True
    assert (await run("network.update", name="n1", action="add", range=rng))["changed"] is False
    assert (await run("network.update", name="n1", action="delete", range=rng))["changed"] is True
    err = await error(run, "network.update", name="n1", action="add", host=host, family="ipv6")
    assert err["code"] == "invalid_argument"


async def test_update_inactive_applies_to_config_only(run: Call, virt: FakeVirt) -> None:
    await run("network.define", name="n1", spec=NAT)
    host = {"mac": "52:54:00:00:00:07", "ip": "192.168.150.7"}
    res = await run("network.update", name="n1", action="add", host=host)
    assert res["applied"] == ["config"]
    err = await error(run, "network.update", name="n1", action="add", host=host, config=False)
    assert err["code"] == "conflict"


# ------------------------------------------------------------------ watcher
class FakeConnection(FakeVirt):
    """FakeVirt plus the connection hooks the watcher drives."""

    uri = "test:///"

    def __init__(self) -> None:
        super().__init__()
        self.on_event: Callable[[str, str], None] | None = None
        self.on_close: Callable[[str], None] | None = None
        self.on_domain: Callable[[str, str, str, str], None] | None = None
        self.opens = 0
        self.refuse = 0

    async def open(self, on_event: Callable[[str, str], None],
                   on_close: Callable[[str], None],
                   on_domain: Callable[[str, str, str, str], None] | None = None) -> None:
        if self.refuse:
            self.refuse -= 1
            raise VirtError(Reason.UNAVAILABLE, "connection refused")
        self.up = True
        self.opens += 1
        self.on_event, self.on_close, self.on_domain = on_event, on_close, on_domain

    async def close(self) -> None:
        self.up = False

    def shutdown(self) -> None:
        return None

    async def event_state(self, name: str, event: str) -> NetworkState | None:
        return await self.get_network(name)


async def _until(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    """tests/support/wait.until with this file's 2 s bound and 5 ms poll."""
    await until(cond, "the condition", timeout, poll=0.005)


async def test_watcher_events_reconnect_and_resync(vnet: FakeNet) -> None:
    conn = FakeConnection()
    sink = RecordingSink()
    states: dict[str, str] = {}
    ctx = Context(host_id="hv1", net=vnet, policy=Policy(), version="t", events=sink,
                  virt=conn)  # type: ignore[arg-type]
    w = LibvirtWatcher(conn, ctx, states, reconnect_max_seconds=0.05,  # type: ignore[arg-type]
                       reconnect_min_seconds=0.01)
    ctx.snapshot_parts = (w.snapshot,)  # as the daemon's wiring does
    await w.start()
    try:
        assert states["libvirt"] == "connected"
        d = Dispatcher(build_registry(), ctx)
        await d.execute(parse_request({"op": "network.define",
                                       "args": {"name": "n1", "spec": NAT, "start": True}}))
        assert conn.on_event is not None
        conn.on_event("n1", "defined")
        conn.on_event("n1", "started")
        await _until(lambda: len(sink.events) == 2)
        assert [(t, s) for t, s, _ in sink.events] == [("network.defined", "n1"),
                                                      ("network.started", "n1")]
        assert sink.events[1][2]["active"] is True
        assert sink.events[1][2]["kind"] == "nat"
        snap = await ctx.snapshot_parts[0]()
        assert [n["name"] for n in snap["networks"]] == ["n1"]

        # libvirtd goes away; while it is away n1 stops and n2 appears (started).
        sink.events.clear()
        conn.refuse = 2
        assert conn.on_close is not None
        conn.on_close("eof")
        assert states["libvirt"] == "degraded"
        conn.nets["n1"] = replace(conn.nets["n1"], active=False)
        conn.nets["n2"] = NetworkState("n2", "22222222-2222-4222-8222-222222222222", True, True,
                                       False, "<network><name>n2</name></network>")
        await _until(lambda: states["libvirt"] == "connected")
        assert conn.opens == 2  # two refused attempts, then connected again
        got = sorted((t, s) for t, s, _ in sink.events)
        assert got == [("network.defined", "n2"), ("network.started", "n2"),
                       ("network.stopped", "n1")]
        assert all(data["resync"] is True for _, _, data in sink.events)
        # Events flow again through the new callbacks.
        sink.events.clear()
        conn.on_event("n2", "stopped")
        await _until(lambda: len(sink.events) == 1)
        assert sink.events[0][:2] == ("network.stopped", "n2")
    finally:
        await w.stop()
    assert states["libvirt"] == "stopped"
