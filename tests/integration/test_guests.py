"""Real guests on every libvirt network kind this machine runs, with vnetd driving them.

One fleet per module: vnetd (through the raw contract only) defines the networks, the
bridge and the TAPs; then every guest boots at once (TCG is slow, the machine has two
cores: booting them in parallel keeps the suite's time down) and each prints its DHCP
lease and ping results on its serial console (tests/support/guest.py). Each test then
checks one kind:

- isolated: two guests reach each other (DHCP host reservations) and nothing beyond the
  host, even with a default route forced through it (libvirt's reject rules);
- nat, route, open: a lease, the gateway, and an "outside" namespace behind the host;
- bridge onto a vnetd bridge: libvirt's own vnetN on vnetd's bridge, reported by vnetd
  (link.list, bridge.list) and never removed by its cleanup;
- macvtap on one end of a veth whose other end is in a peer namespace;
- Nova's way: `<interface type='ethernet'><target dev=TAP managed='no'/>` on a TAP that
  vnetd made (multi_queue for `<driver queues='2'/>`, vnet_hdr); it outlives the guest;
- bare QEMU (no libvirt) on a vnetd TAP;
- cleanup.run while they run keeps every TAP a guest holds (and removes an idle one).

DHCP on the vnetd bridge and behind the macvtap comes from dnsmasq in a peer namespace.
Boot-to-lease times go to ``$VNETD_LAB_DIR/guest-figures.json``; with
``VNETD_GUEST_ROUNDS=3`` every kind is booted three more times, one guest at a time, for
the medians.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support import netns as netns_mod
from tests.support.daemon import DaemonProcess
from tests.support.env import Lab
from tests.support.guest import (
    Console,
    Dnsmasq,
    GuestImage,
    LibvirtGuest,
    QemuGuest,
    Verdict,
    boot_figure,
    boot_libvirt_guest,
    domain_xml,
    ethernet_iface,
    holders,
    mac_for,
    network_iface,
)
from tests.support.libvirtd import PrivateLibvirtd
from tests.support.rpc import RawRpc

pytestmark = [pytest.mark.integration, pytest.mark.libvirt, pytest.mark.timeout(600)]
T = TypeVar("T")

OUT = "10.250.0"  # the "outside" namespace behind the host: OUT.2, the host's end OUT.1
BR = "10.170.0"  # the vnetd bridge's peer (dnsmasq): BR.1
MV = "10.171.0"  # the macvtap's peer (dnsmasq): MV.1
ROUTED = {"isolated": 161, "nat": 162, "route": 163, "open": 164}
NEGATIVE_WAIT = 8  # seconds a ping that must fail is tried
Guest = LibvirtGuest | QemuGuest


@dataclass
class Case:
    """One kind: its guests, what each must see, and set-up facts for the checks."""

    kind: str
    guests: list[Guest] = field(default_factory=list)
    expect: dict[str, dict[str, str]] = field(default_factory=dict)  # guest -> target -> ok|fail
    facts: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    verdicts: dict[str, Verdict] = field(default_factory=dict)


def ip(ns: str, *args: str) -> None:
    netns_mod.run_in(ns, "ip", *args)


class Fleet:
    """Set-up and tear-down of the module's networks and guests (sync; own event loop)."""

    def __init__(self, lab: Lab, libvirtd: PrivateLibvirtd, image: GuestImage) -> None:
        self.lab = lab
        self.libvirtd = libvirtd
        self.ns = libvirtd.netns
        self.image = image
        self.dir = lab.dir / f"guests-{os.getpid()}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sfx = lab.suffix[:3]
        self.loop = asyncio.new_event_loop()
        self.rpc = RawRpc(lab.amqp_url)
        self.daemon = DaemonProcess(
            host_id=DaemonProcess.new_host_id(lab.suffix), amqp_url=lab.amqp_url,
            netns=self.ns, workdir=lab.dir / "daemons" / f"guests-{os.getpid()}",
            extra={"libvirt": {"enabled": True, "uri": libvirtd.uri},
                   # Only the explicit cleanup.run below sweeps; nothing but a holder or
                   # a libvirt reference may keep a TAP then.
                   "cleanup": {"interval_seconds": 0, "tap_grace_seconds": 0,
                               "bridge_grace_seconds": 0, "lease_seconds": 1}})
        self.cases: dict[str, Case] = {}
        self.namespaces: list[str] = []
        self.servers: list[Dnsmasq] = []
        self.started_at = 0.0
        self.fleet_seconds = 0.0

    # ------------------------------------------------------------ plumbing
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def ok(self, op: str, **args: Any) -> dict[str, Any]:
        reply = self.run(self.rpc.call(self.daemon.host_id, op, args, timeout=60))
        assert reply["ok"] is True, f"{op} {args}: {reply}"
        result: dict[str, Any] = reply["result"]
        return result

    def console(self, name: str) -> Console:
        return Console(self.dir / f"{name}.console")

    def peer(self, name: str, addr: str, *, dhcp: bool, gw: str | None = None) -> str:
        """A namespace joined to the host namespace by veth ``<name>h`` (host end, left
        for the caller to wire) / ``<name>p`` (``addr`` on it); dnsmasq on it with ``dhcp``."""
        ns = netns_mod.create()
        self.namespaces.append(ns)
        host, far = f"{name}h", f"{name}p"
        ip(self.ns, "link", "add", host, "type", "veth", "peer", "name", far)
        ip(self.ns, "link", "set", far, "netns", ns)
        ip(ns, "addr", "add", addr, "dev", far)
        ip(ns, "link", "set", far, "up")
        if gw:
            ip(ns, "route", "add", "default", "via", gw)
        if dhcp:
            base = addr.rsplit(".", 1)[0]
            self.servers.append(Dnsmasq(ns, far, f"{base}.100", f"{base}.150",
                                        self.dir).start())
        return host

    def libvirt_guest(self, case: Case, name: str, iface: str, *, ping: list[str],
                      expect: dict[str, str], gw: str | None = None) -> None:
        """A guest that stays up (hold) after its verdict, until the tests stop it."""
        console = self.console(name)
        xml = domain_xml(name, self.image, console.path, [iface],
                         cmdline=self.image.cmdline(ping=ping, hold=600, wait=60, gw=gw))
        case.guests.append(LibvirtGuest(self.libvirtd, name, xml, console))
        case.expect[name] = expect
        case.facts.setdefault("ifaces", {})[name] = iface

    # ------------------------------------------------------------ the kinds
    def routed(self, kind: str) -> Case:
        case = Case(kind)
        n = ROUTED[kind]
        name, bridge = f"g{kind[:3]}{self.sfx}", f"vg{kind[:3]}{self.sfx}"
        macs = [mac_for(f"{name}-a"), mac_for(f"{name}-b")]
        spec = {"kind": kind, "bridge": {"name": bridge, "stp": False},
                "ipv4": {"address": f"10.{n}.0.1", "prefix": 24, "dhcp": {
                    "ranges": [{"start": f"10.{n}.0.100", "end": f"10.{n}.0.150"}],
                    "hosts": [{"mac": macs[0], "ip": f"10.{n}.0.11"},
                              {"mac": macs[1], "ip": f"10.{n}.0.12"}]}}}
        res = self.ok("network.define", name=name, spec=spec, start=True)
        case.facts.update(network=name, bridge=bridge, define=res)
        gw = f"10.{n}.0.1"
        if kind == "isolated":
            # A forces its default route through the host: libvirt must still drop it.
            a, b = f"{name}-a", f"{name}-b"
            self.libvirt_guest(case, a, network_iface(name, macs[0]),
                               ping=[f"10.{n}.0.12", f"{OUT}.2@{NEGATIVE_WAIT}"],
                               expect={f"10.{n}.0.12": "ok", f"{OUT}.2": "fail"}, gw=gw)
            self.libvirt_guest(case, b, network_iface(name, macs[1]),
                               ping=[f"10.{n}.0.11", gw], expect={f"10.{n}.0.11": "ok",
                                                                  gw: "ok"})
        else:
            g = f"{name}-a"
            self.libvirt_guest(case, g, network_iface(name, macs[0]), ping=[gw, f"{OUT}.2"],
                               expect={gw: "ok", f"{OUT}.2": "ok"})
        case.facts["reserved"] = {macs[0]: f"10.{n}.0.11", macs[1]: f"10.{n}.0.12"}
        return case

    def vnetd_bridge(self) -> list[Case]:
        """One vnetd bridge, its DHCP peer, and three guests on it: libvirt's bridge
        network (vnetN), Nova's pre-made TAP, bare QEMU on a vnetd TAP."""
        bridge = f"vgbr{self.sfx}"
        self.ok("bridge.ensure", name=bridge)
        host_end = self.peer(f"vgb{self.sfx}", f"{BR}.1/24", dhcp=True)
        ip(self.ns, "link", "set", host_end, "master", bridge, "up")
        peer = f"{BR}.1"

        brk = Case("bridge", facts={"bridge": bridge})
        net = f"gbr{self.sfx}"
        brk.facts["network"] = net
        brk.facts["define"] = self.ok("network.define", name=net,
                                      spec={"kind": "bridge", "bridge": bridge}, start=True)
        g = f"{net}-a"
        brk.facts["mac"] = mac_for(g)
        self.libvirt_guest(brk, g, network_iface(net, mac_for(g)), ping=[peer],
                           expect={peer: "ok"})

        nova = Case("ethernet", facts={"bridge": bridge})
        tap = f"vgnova{self.sfx}"
        nova.facts["tap"] = tap
        nova.facts["ensure"] = self.ok("tap.ensure", name=tap, bridge=bridge, owner_uid=0,
                                       multi_queue=True, vnet_hdr=True)
        g = f"gnova{self.sfx}"
        nova.facts["mac"] = mac_for(g)
        self.libvirt_guest(nova, g, ethernet_iface(tap, mac_for(g), queues=2), ping=[peer],
                           expect={peer: "ok"})

        bare = Case("qemu", facts={"bridge": bridge})
        tap = f"vgqemu{self.sfx}"
        bare.facts["tap"] = tap
        bare.facts["ensure"] = self.ok("tap.ensure", name=tap, bridge=bridge, owner_uid=0,
                                       vnet_hdr=True)
        g = f"gqemu{self.sfx}"
        bare.guests.append(QemuGuest(self.ns, self.image, tap, mac_for(g), self.console(g),
                                     self.image.cmdline(ping=[peer], hold=600, wait=60),
                                     vnet_hdr=True))
        bare.expect[g] = {peer: "ok"}
        return [brk, nova, bare]

    def macvtap(self) -> Case:
        case = Case("macvtap")
        parent = self.peer(f"vgm{self.sfx}", f"{MV}.1/24", dhcp=True)
        ip(self.ns, "link", "set", parent, "up")
        net = f"gmv{self.sfx}"
        case.facts.update(network=net, parent=parent)
        case.facts["define"] = self.ok("network.define", name=net, spec={
            "kind": "macvtap", "mode": "bridge", "devices": [parent]}, start=True)
        g = f"{net}-a"
        case.facts["mac"] = mac_for(g)
        self.libvirt_guest(case, g, network_iface(net, mac_for(g)), ping=[f"{MV}.1"],
                           expect={f"{MV}.1": "ok"})
        return case

    # ------------------------------------------------------------ lifecycle
    def setup(self) -> None:
        self.run(self.rpc.connect())
        self.run(self.daemon.start())
        self.wait_libvirt_connected()
        # The outside: a namespace behind the host, reachable only by forwarding.
        out = self.peer(f"vgo{self.sfx}", f"{OUT}.2/24", dhcp=False, gw=f"{OUT}.1")
        ip(self.ns, "addr", "add", f"{OUT}.1/24", "dev", out)
        ip(self.ns, "link", "set", out, "up")
        netns_mod.run_in(self.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        builders: list[tuple[str, Callable[[], Case | list[Case]]]] = [
            *((k, lambda k=k: self.routed(k)) for k in ROUTED),  # type: ignore[misc]
            ("bridge", self.vnetd_bridge), ("macvtap", self.macvtap)]
        for kind, build in builders:
            try:
                made = build()
            except Exception as exc:  # reported by that kind's test, the others go on
                self.cases[kind] = Case(kind, error=exc)
                continue
            for case in made if isinstance(made, list) else [made]:
                self.cases[case.kind] = case
        # Every guest at once.
        self.started_at = time.monotonic()
        for case in self.cases.values():
            for g in case.guests:
                try:
                    g.start()
                except Exception as exc:
                    case.error = case.error or exc
        self.wait_verdicts(timeout=300)
        self.fleet_seconds = time.monotonic() - self.started_at

    def wait_libvirt_connected(self) -> None:
        for _ in range(200):
            health = self.ok("host.health")
            if health["components"].get("libvirt") == "connected":
                return
            time.sleep(0.1)
        raise AssertionError(f"vnetd never connected to libvirtd: {health}")

    def wait_verdicts(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = [(c, g) for c in self.cases.values() if c.error is None for g in c.guests]
        while pending and time.monotonic() < deadline:
            left = []
            for case, g in pending:
                v = g.console.result()
                if v is not None:
                    case.verdicts[g_name(g)] = v
                elif time.monotonic() - self.started_at > 20 and not g.running:
                    case.error = case.error or AssertionError(
                        f"{g_name(g)} stopped without a verdict:\n{g.console.text()[-3000:]}"
                        + (g.qemu_log() if isinstance(g, QemuGuest) else ""))
                else:
                    left.append((case, g))
            pending = left
            time.sleep(0.2)
        for case, g in pending:
            case.error = case.error or AssertionError(
                f"{g_name(g)}: no verdict within {timeout}s:\n{g.console.text()[-3000:]}")

    def stop_guests(self) -> None:
        for case in self.cases.values():
            for g in case.guests:
                if isinstance(g, LibvirtGuest):
                    g.destroy()
                else:
                    g.kill()

    def teardown(self) -> None:
        self.stop_guests()
        for s in self.servers:
            s.stop()
        for ns in self.namespaces:
            netns_mod.delete(ns)
        try:
            self.run(self.daemon.stop())
            self.run(self.rpc.close())
        finally:
            self.loop.close()

    def check(self, kind: str) -> Case:
        """The kind's case, failing with its set-up error or any wrong ping result."""
        case = self.cases[kind]
        if case.error is not None:
            raise case.error
        for g in case.guests:
            v = case.verdicts[g_name(g)]
            assert v.lease is not None, f"{g_name(g)} got no lease: {v}"
            got = {t: v.pings.get(t) for t in case.expect[g_name(g)]}
            assert got == case.expect[g_name(g)], (
                f"{g_name(g)} ({kind}) pings {got}, want {case.expect[g_name(g)]}\n"
                f"{g.console.text()[-2000:]}")
        return case


def g_name(g: Guest) -> str:
    return g.name if isinstance(g, LibvirtGuest) else g.console.path.stem


@pytest.fixture(scope="module")
def fleet(lab: Lab, libvirtd: PrivateLibvirtd) -> Iterator[Fleet]:
    f = Fleet(lab, libvirtd, GuestImage.locate())
    try:
        f.setup()
        yield f
    finally:
        f.teardown()


def in_ns(ns: str) -> dict[str, dict[str, Any]]:
    return netns_mod.links(ns)


# ------------------------------------------------------------------ the kinds
def test_isolated_guests_reach_each_other_and_nothing_else(fleet: Fleet) -> None:
    case = fleet.check("isolated")
    leases = {g_name(g): case.verdicts[g_name(g)].lease for g in case.guests}
    # Each got the address reserved for its MAC through network.define's DHCP hosts.
    assert sorted(str(x).split("/")[0] for x in leases.values()) == sorted(
        case.facts["reserved"].values())
    isolated_a = case.verdicts[g_name(case.guests[0])]
    assert isolated_a.pings[f"{OUT}.2"] == "fail"
    # The same outside address answers a NAT guest in the same run: the failure above is
    # the isolation, not a broken outside.
    assert fleet.cases["nat"].verdicts and fleet.check("nat")


@pytest.mark.parametrize("kind", ["nat", "route", "open"])
def test_routed_guest_gets_a_lease_the_gateway_and_the_outside(fleet: Fleet, kind: str) -> None:
    case = fleet.check(kind)
    v = case.verdicts[g_name(case.guests[0])]
    n = ROUTED[kind]
    assert v.lease == f"10.{n}.0.11/24"  # its reservation
    assert v.nics["eth0"]["router"] == f"10.{n}.0.1"  # libvirt's dnsmasq gave the gateway


def test_bridge_kind_guest_gets_libvirts_vnet_on_the_vnetd_bridge(fleet: Fleet) -> None:
    case = fleet.check("bridge")
    guest = case.guests[0]
    assert isinstance(guest, LibvirtGuest)
    target = guest.interfaces()[case.facts["mac"]]
    assert target.startswith("vnet"), target
    bridge = case.facts["bridge"]
    links = in_ns(fleet.ns)
    assert links[target].get("master") == bridge
    # vnetd reports libvirt's TAP as a port of its bridge, and as not its own.
    listed = {b["name"]: b for b in fleet.ok("bridge.list")["bridges"]}
    assert target in listed[bridge]["ports"]
    taps = {x["name"]: x for x in fleet.ok("link.list", kind="tap")["links"]}
    assert taps[target]["owned"] is False
    case.facts["vnet"] = target


def test_macvtap_guest_reaches_the_peer(fleet: Fleet) -> None:
    case = fleet.check("macvtap")
    guest = case.guests[0]
    assert isinstance(guest, LibvirtGuest)
    target = guest.interfaces()[case.facts["mac"]]
    link = in_ns(fleet.ns)[target]
    assert link["linkinfo"]["info_kind"] == "macvtap"
    assert link["link"] == case.facts["parent"]


def test_nova_guest_on_a_tap_vnetd_made(fleet: Fleet) -> None:
    case = fleet.check("ethernet")
    guest = case.guests[0]
    assert isinstance(guest, LibvirtGuest)
    tap = case.facts["tap"]
    assert guest.interfaces()[case.facts["mac"]] == tap
    link = in_ns(fleet.ns)[tap]
    assert link["ifalias"] == "vnetd:v1"
    assert link["master"] == case.facts["bridge"]
    info = link["linkinfo"]["info_data"]
    assert (info["multi_queue"], info["vnet_hdr"], info["persist"]) == (True, True, True), info
    # One QEMU (the guest's process) holds it, on both queues of <driver queues='2'/>
    # (QEMU detaches the queue the guest has not enabled: it counts as disabled).
    assert info["numqueues"] + info["numdisabled"] == 2, info
    assert len(holders(tap, netns_mod.pids(fleet.ns))) == 1


def test_bare_qemu_guest_on_a_vnetd_tap(fleet: Fleet) -> None:
    case = fleet.check("qemu")
    guest = case.guests[0]
    assert isinstance(guest, QemuGuest) and guest.proc is not None
    assert holders(case.facts["tap"], netns_mod.pids(fleet.ns)) == [
        p for p in netns_mod.pids(fleet.ns) if _is_qemu_of(p, guest)]


def _is_qemu_of(pid: int, guest: QemuGuest) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmd) and cmd[0].endswith(b"qemu-system-x86_64") and any(
        f"ifname={guest.tap}".encode() in a for a in cmd)


# ------------------------------------------------------------------ cleanup and TAP lifetime
def test_cleanup_keeps_every_tap_a_running_guest_holds(fleet: Fleet) -> None:
    idle = f"vgidle{fleet.sfx}"
    fleet.ok("tap.ensure", name=idle)  # owned, held by nobody: the sweep must remove it
    time.sleep(1.5)  # past lease_seconds = 1
    held = {fleet.cases[k].facts["tap"] for k in ("ethernet", "qemu")
            if fleet.cases[k].error is None}
    libvirts = {t for k in ("bridge", "macvtap", "isolated", "nat", "route", "open")
                if fleet.cases[k].error is None
                for g in fleet.cases[k].guests if isinstance(g, LibvirtGuest)
                for t in g.interfaces().values()}
    before = set(in_ns(fleet.ns))
    assert held | libvirts <= before
    result = fleet.ok("cleanup.run")
    got = {c["name"]: c for c in result["candidates"]}
    assert got[idle]["action"] == "removed", got.get(idle)
    after = set(in_ns(fleet.ns))
    assert idle not in after
    assert held | libvirts <= after, f"removed: {(held | libvirts) - after}"
    assert result["removed"] == 1 or [c for c in got.values() if c["action"] == "removed"] == [
        got[idle]]


def test_taps_vnetd_made_outlive_their_guests(fleet: Fleet) -> None:
    """Last: stops the guests. vnetd's TAPs stay (managed='no', script=no); libvirt's vnetN
    goes with its guest (libvirt made it)."""
    nova, bare, brk = fleet.check("ethernet"), fleet.check("qemu"), fleet.check("bridge")
    vnet = next(iter(brk.guests[0].interfaces().values()))  # type: ignore[union-attr]
    for case in (nova, bare, brk):
        for g in case.guests:
            if isinstance(g, LibvirtGuest):
                g.destroy()
                g.wait_gone()
            else:
                g.kill()
    links = in_ns(fleet.ns)
    for tap in (nova.facts["tap"], bare.facts["tap"]):
        assert tap in links, f"{tap} went away with its guest"
        assert links[tap]["ifalias"] == "vnetd:v1"
        assert not holders(tap, netns_mod.pids(fleet.ns))
    assert vnet not in links


# ------------------------------------------------------------------ figures
@pytest.mark.timeout(3600)  # VNETD_GUEST_ROUNDS=3: 24 boots one at a time, on a busy TCG host
def test_boot_to_lease_figures(fleet: Fleet) -> None:
    """Boot (virsh create / QEMU start) to eth0's DHCP lease per kind, as the host saw it.

    Always: the parallel fleet's times. With VNETD_GUEST_ROUNDS=N also N boots per kind,
    one guest at a time (hold 0: each powers off by itself, which also shows ACPI
    poweroff ends the domain), for medians not skewed by the fleet's own contention."""
    figures: dict[str, Any] = {"fleet_seconds": round(fleet.fleet_seconds, 1),
                               "parallel": {}, "sequential": {}}
    for kind, case in fleet.cases.items():
        for g in case.guests:
            v = case.verdicts.get(g_name(g))
            if v is not None and v.lease_at is not None:
                figures["parallel"].setdefault(kind, []).append(round(v.lease_at, 2))
    rounds = int(os.environ.get("VNETD_GUEST_ROUNDS", "0"))
    if rounds:
        fleet.stop_guests()  # the same MACs and TAPs are used again, one guest at a time
    for kind, case in fleet.cases.items() if rounds else []:
        if case.error is not None:
            continue
        times = []
        for i in range(rounds):
            name = f"{g_name(case.guests[0])}-r{i}"
            console = fleet.console(name)
            if kind == "qemu":
                q = case.guests[0]
                assert isinstance(q, QemuGuest)
                g = QemuGuest(q.netns, q.image, q.tap, q.mac, console,
                              fleet.image.cmdline(hold=0), vnet_hdr=True).start()
                try:
                    v = g.verdict(timeout=180)
                    g.wait(60)
                finally:
                    g.kill()
            else:  # poweroff: its own poweroff -f must end the domain (ACPI)
                v = boot_libvirt_guest(fleet.libvirtd, name,
                                       list(case.facts["ifaces"].values())[:1],
                                       workdir=fleet.dir, image=fleet.image, poweroff=True)
            assert v.lease_at is not None, console.text()
            times.append(v.lease_at)
        figures["sequential"][kind] = boot_figure(times)
    out = fleet.lab.dir / "guest-figures.json"
    out.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    assert figures["parallel"], "no guest got a lease"
