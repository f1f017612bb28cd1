"""Real guests for the tests: the tiny Debian guest, under libvirt or bare QEMU.

The image (``scripts/guest-image.sh``: Debian's cloud kernel, its virtio-net modules and a
busybox initramfs) is built and cached by ``scripts/test.sh`` before it makes the lab
(a new namespace has no route to the package mirror) and handed over in
``VNETD_GUEST_IMAGE``. The guest's /init (``scripts/guest/init``) asks DHCP on every NIC,
pings the targets on its kernel command line, prints ``VNETD-GUEST ...`` lines on its
serial console (a file here) and powers off. Nothing here needs the daemon.

    image = GuestImage.locate()
    console = Console(tmp / "g1.log")
    xml = domain_xml("g1", image, console.path, [network_iface("net1", mac_for("g1"))],
                     cmdline=image.cmdline(ping=["10.0.0.1"]))
    guest = LibvirtGuest(libvirtd, "g1", xml, console).start()
    verdict = console.verdict(timeout=120)     # lease, ping results, timings

or in one call: ``boot_libvirt_guest(libvirtd, "g1", [network_iface(...)], ping=[...])``.

The accelerator is a setting: ``VNETD_GUEST_ACCEL=tcg`` (default; this machine's KVM runs
only PVM guests) or ``kvm`` on a real hypervisor, which also makes the libvirt domain
``type='kvm'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from tests.support.env import REPO_ROOT

ENV_IMAGE = "VNETD_GUEST_IMAGE"
ENV_ACCEL = "VNETD_GUEST_ACCEL"
QEMU = "qemu-system-x86_64"
PREFIX = "VNETD-GUEST "


class GuestError(RuntimeError):
    pass


def accel() -> str:
    """``tcg`` or ``kvm`` (VNETD_GUEST_ACCEL)."""
    value = os.environ.get(ENV_ACCEL, "tcg")
    if value not in ("tcg", "kvm"):
        raise GuestError(f"{ENV_ACCEL}={value!r}: want tcg or kvm")
    return value


# ------------------------------------------------------------------ the image
@dataclass(frozen=True)
class GuestImage:
    dir: Path

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def info(self) -> dict[str, str]:
        """image.env: kernel package/version/ABI, busybox version, modules loaded."""
        out = {}
        for line in (self.dir / "image.env").read_text().splitlines():
            key, _, value = line.partition("=")
            out[key] = value.strip('"')
        return out

    def cmdline(self, *, ping: Sequence[str] = (), wait: float | None = None,
                gw: str | None = None, static: str | None = None,
                hold: float | None = None) -> str:
        """The kernel command line: the image's base plus the guest's instructions."""
        parts = [(self.dir / "cmdline").read_text().strip()]
        if ping:
            parts.append("vnetd.ping=" + ",".join(ping))
        if wait is not None:
            parts.append(f"vnetd.wait={int(wait)}")
        if gw:
            parts.append(f"vnetd.gw={gw}")
        if static:
            parts.append(f"vnetd.ip={static}")
        if hold is not None:
            parts.append(f"vnetd.hold={int(hold)}")
        return " ".join(parts)

    @classmethod
    def locate(cls) -> GuestImage:
        """The image scripts/test.sh built (VNETD_GUEST_IMAGE), or build it now.

        Building needs the package mirror: inside the lab that works only when the image
        is cached already (then the script downloads nothing).
        """
        path = os.environ.get(ENV_IMAGE)
        if path:
            image = cls(Path(path))
            if not (image.kernel.is_file() and image.initrd.is_file()):
                raise GuestError(f"{ENV_IMAGE}={path}: no vmlinuz/initrd.img there")
            return image
        return cls.build()

    @classmethod
    def build(cls) -> GuestImage:
        proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "guest-image.sh")],
                              capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            raise GuestError("scripts/guest-image.sh failed (run it outside the lab: "
                             f"scripts/test.sh does):\n{proc.stderr[-2000:]}")
        return cls(Path(proc.stdout.strip().splitlines()[-1]))


def mac_for(name: str, index: int = 0) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix) per guest and NIC."""
    h = hashlib.sha256(f"{name}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in h[:3])


# ------------------------------------------------------------------ the serial console
_LINE = re.compile(r"VNETD-GUEST (?P<body>.*?) t=(?P<t>[0-9.]+)\s*$")


@dataclass(frozen=True)
class Line:
    """One ``VNETD-GUEST`` line: ``words`` (bare words), ``fields`` (k=v), guest uptime
    ``t``, and ``at``: seconds after the console's start when the host first saw it."""

    words: tuple[str, ...]
    fields: dict[str, str]
    t: float
    at: float
    text: str

    def get(self, key: str) -> str | None:
        return self.fields.get(key)


def parse_line(text: str, at: float = 0.0) -> Line | None:
    m = _LINE.search(text)
    if m is None:
        return None
    words: list[str] = []
    fields: dict[str, str] = {}
    for tok in m.group("body").split():
        key, sep, value = tok.partition("=")
        if sep:
            fields[key] = value
        else:
            words.append(tok)
    return Line(tuple(words), fields, float(m.group("t")), at, m.group(0))


@dataclass
class Verdict:
    lease: str | None  # eth0's address/prefix, None when it got none
    ping: str  # ok | fail | none
    pings: dict[str, str]  # target -> ok|fail
    nics: dict[str, dict[str, str]]  # eth0 -> {mac, lease, router}
    lease_at: float | None  # host seconds from start to eth0's lease line
    lease_t: float | None  # guest uptime at eth0's lease
    done_at: float  # host seconds from start to the verdict line


class Console:
    """The guest's serial console file, parsed incrementally.

    ``started`` (time.monotonic()) is when the guest was started; ``Line.at`` counts from
    it, so ``at`` of the lease line is "boot to DHCP lease" as the host saw it.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.started = time.monotonic()
        self._offset = 0
        self._partial = b""
        self._lines: list[Line] = []

    def mark_started(self) -> None:
        self.started = time.monotonic()

    def lines(self) -> list[Line]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return list(self._lines)
        if chunk:
            self._offset += len(chunk)
            data = self._partial + chunk
            *complete, self._partial = data.split(b"\n")
            at = time.monotonic() - self.started
            for raw in complete:
                line = parse_line(raw.decode(errors="replace"), at)
                if line is not None:
                    self._lines.append(line)
        return list(self._lines)

    def text(self) -> str:
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def find(self, pred: Callable[[Line], bool]) -> Line | None:
        return next((ln for ln in self.lines() if pred(ln)), None)

    def wait(self, pred: Callable[[Line], bool], timeout: float, what: str = "a line",
             alive: Callable[[], bool] | None = None) -> Line:
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(pred)
            if found is not None:
                return found
            if time.monotonic() >= deadline or (alive is not None and not alive()
                                                and self.find(pred) is None):
                raise GuestError(f"{self.path.name}: no {what} within {timeout}s"
                                 f"{'' if alive is None or alive() else ' (guest gone)'};"
                                 f" console:\n{self.text()[-3000:]}")
            time.sleep(0.1)

    async def await_(self, pred: Callable[[Line], bool], timeout: float,
                     what: str = "a line") -> Line:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = self.find(pred)
            if found is not None:
                return found
            if loop.time() >= deadline:
                raise GuestError(f"{self.path.name}: no {what} within {timeout}s; "
                                 f"console:\n{self.text()[-3000:]}")
            await asyncio.sleep(0.1)

    def result(self) -> Verdict | None:
        """The verdict, once the guest printed it."""
        lines = self.lines()
        final = next((ln for ln in lines if "verdict" in ln.words), None)
        if final is None:
            return None
        nics: dict[str, dict[str, str]] = {}
        lease_at = lease_t = None
        for ln in lines:
            nic = ln.get("nic")
            if nic and ("mac" in ln.fields):
                nics[nic] = dict(ln.fields)
                if nic == "eth0" and ln.get("lease") not in (None, "none"):
                    lease_at, lease_t = ln.at, ln.t
                if nic == "eth0" and ln.get("static"):
                    lease_at, lease_t = ln.at, ln.t
        pings = {}
        for ln in lines:
            p = ln.get("ping")
            if p and ":" in p and "verdict" not in ln.words:
                target, _, res = p.rpartition(":")
                pings[target] = res
        lease = final.get("lease")
        return Verdict(lease=None if lease in (None, "none") else lease,
                       ping=final.get("ping") or "none", pings=pings, nics=nics,
                       lease_at=lease_at, lease_t=lease_t, done_at=final.at)

    def verdict(self, timeout: float = 180.0, alive: Callable[[], bool] | None = None
                ) -> Verdict:
        self.wait(lambda ln: "verdict" in ln.words, timeout, "verdict", alive)
        result = self.result()
        assert result is not None
        return result

    async def averdict(self, timeout: float = 180.0) -> Verdict:
        await self.await_(lambda ln: "verdict" in ln.words, timeout, "verdict")
        result = self.result()
        assert result is not None
        return result


# ------------------------------------------------------------------ libvirt domains
def _iface(kind: str, mac: str, *children: ET.Element) -> ET.Element:
    iface = ET.Element("interface", type=kind)
    ET.SubElement(iface, "mac", address=mac)
    for child in children:
        iface.append(child)
    ET.SubElement(iface, "model", type="virtio")
    ET.SubElement(iface, "rom", enabled="no")  # no iPXE: saves a second of TCG boot
    return iface


def _el(tag: str, **attrs: str) -> ET.Element:
    return ET.Element(tag, {k.rstrip("_"): v for k, v in attrs.items()})


def network_iface(network: str, mac: str, portgroup: str | None = None) -> str:
    """``<interface type='network'>`` on a libvirt network (libvirt makes the TAP)."""
    source = _el("source", network=network)
    if portgroup:
        source.set("portgroup", portgroup)
    return ET.tostring(_iface("network", mac, source), encoding="unicode")


def bridge_iface(bridge: str, mac: str) -> str:
    """``<interface type='bridge'>`` on a host bridge (libvirt makes its own vnetN)."""
    return ET.tostring(_iface("bridge", mac, _el("source", bridge=bridge)), encoding="unicode")


def ethernet_iface(tap: str, mac: str, queues: int | None = None) -> str:
    """Nova's way: a TAP made beforehand (vnetd's tap.ensure), ``managed='no'``, so libvirt
    only opens it and leaves it behind when the guest stops."""
    children = [_el("target", dev=tap, managed="no")]
    if queues:
        children.append(_el("driver", queues=str(queues)))
    return ET.tostring(_iface("ethernet", mac, *children), encoding="unicode")


def direct_iface(dev: str, mode: str, mac: str) -> str:
    """``<interface type='direct'>``: a macvtap on ``dev``."""
    return ET.tostring(_iface("direct", mac, _el("source", dev=dev, mode=mode)),
                       encoding="unicode")


def domain_xml(name: str, image: GuestImage, console: Path, interfaces: Iterable[str], *,
               cmdline: str, memory_mib: int = 128) -> str:
    """A direct-kernel-boot domain: ACPI (so ``poweroff -f`` ends it), serial to a file,
    machine ``pc`` (its ACPI PCI hotplug lets NICs come and go), nothing else."""
    kind = "kvm" if accel() == "kvm" else "qemu"
    dom = ET.Element("domain", type=kind)
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "kernel").text = str(image.kernel)
    ET.SubElement(os_el, "initrd").text = str(image.initrd)
    ET.SubElement(os_el, "cmdline").text = cmdline
    feats = ET.SubElement(dom, "features")
    ET.SubElement(feats, "acpi")
    for ev in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(dom, ev).text = "destroy"
    devs = ET.SubElement(dom, "devices")
    for text in interfaces:
        devs.append(ET.fromstring(text))
    serial = ET.SubElement(devs, "serial", type="file")
    ET.SubElement(serial, "source", path=str(console))
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devs, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


class Virsh(Protocol):
    """What LibvirtGuest needs of tests.support.libvirtd.PrivateLibvirtd."""

    root: Path

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]: ...


@dataclass
class LibvirtGuest:
    """A transient domain (``virsh create``): it disappears when it powers off."""

    libvirtd: Virsh
    name: str
    xml: str
    console: Console
    started: bool = False
    xml_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.xml_path = self.console.path.with_suffix(".xml")

    def start(self) -> LibvirtGuest:
        self.xml_path.write_text(self.xml)
        self.console.mark_started()
        self.libvirtd.virsh("create", str(self.xml_path))
        self.started = True
        return self

    @property
    def running(self) -> bool:
        proc = self.libvirtd.virsh("domstate", self.name, check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "running"

    def destroy(self) -> None:
        if self.started:
            self.libvirtd.virsh("destroy", self.name, check=False)

    def wait_gone(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.running:
            if time.monotonic() >= deadline:
                raise GuestError(f"domain {self.name} still running after {timeout}s")
            time.sleep(0.2)

    def live_xml(self) -> str:
        return self.libvirtd.virsh("dumpxml", self.name).stdout

    def interfaces(self) -> dict[str, str]:
        """MAC -> target dev (the TAP or macvtap libvirt used) of the running domain."""
        root = ET.fromstring(self.live_xml())
        out = {}
        for iface in root.iterfind("devices/interface"):
            mac = iface.find("mac")
            target = iface.find("target")
            if mac is not None and target is not None:
                out[str(mac.get("address"))] = str(target.get("dev"))
        return out

    def verdict(self, timeout: float = 180.0) -> Verdict:
        return self.console.verdict(timeout, alive=lambda: self.running)


def boot_libvirt_guest(libvirtd: Virsh, name: str, interfaces: Sequence[str], *,
                       ping: Sequence[str] = (), workdir: Path | None = None,
                       timeout: float = 240.0, image: GuestImage | None = None,
                       poweroff: bool = False) -> Verdict:
    """Boot one guest with these ``<interface>`` XMLs, wait for its verdict, stop it.

    The short way for a test that only needs "a real guest on X gets a lease and reaches
    Y": ``boot_libvirt_guest(libvirtd, "g1", [network_iface("ovs1", mac_for("g1"),
    portgroup="web")], ping=["10.0.0.1"])``. The console file stays in ``workdir``
    (default: libvirtd's own directory) for the failure report. With ``poweroff`` the
    guest's own ``poweroff -f`` must end the domain (ACPI) within 60 s of its verdict.
    """
    image = image or GuestImage.locate()
    console = Console((workdir or libvirtd.root / "guests") / f"{name}.console")
    xml = domain_xml(name, image, console.path, interfaces,
                     cmdline=image.cmdline(ping=ping, wait=60))
    guest = LibvirtGuest(libvirtd, name, xml, console).start()
    try:
        verdict = guest.verdict(timeout)
        if poweroff:
            guest.wait_gone(60)
        return verdict
    finally:
        guest.destroy()


# ------------------------------------------------------------------ bare QEMU
@dataclass
class QemuGuest:
    """QEMU without libvirt, in network namespace ``netns``, on TAP ``tap`` (which must
    exist there: QEMU opens it by name with ``script=no``, so it never creates one)."""

    netns: str
    image: GuestImage
    tap: str
    mac: str
    console: Console
    cmdline: str
    queues: int = 1
    vnet_hdr: bool = False
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def argv(self) -> list[str]:
        netdev = f"tap,id=n0,ifname={self.tap},script=no,downscript=no"
        device = f"virtio-net-pci,netdev=n0,mac={self.mac},romfile="
        if self.queues > 1:
            netdev += f",queues={self.queues}"
            device += f",mq=on,vectors={2 * self.queues + 2}"
        if self.vnet_hdr:
            netdev += ",vnet_hdr=on"
        return ["ip", "netns", "exec", self.netns, QEMU, "-accel", accel(), "-m", "128",
                "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
                "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
                "-append", self.cmdline, "-netdev", netdev, "-device", device,
                "-serial", f"file:{self.console.path}"]

    def start(self) -> QemuGuest:
        self._log = self.console.path.with_suffix(".qemu.log").open("wb")
        self.console.mark_started()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def qemu_log(self) -> str:
        try:
            return self.console.path.with_suffix(".qemu.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def verdict(self, timeout: float = 180.0) -> Verdict:
        return self.console.verdict(timeout, alive=lambda: self.running)


# ------------------------------------------------------------------ a DHCP server peer
@dataclass
class Dnsmasq:
    """dnsmasq as a DHCP server on ``iface`` in ``netns`` (no DNS), for guests on networks
    libvirt does not serve (a vnetd bridge, a macvtap's peer)."""

    netns: str
    iface: str
    start_ip: str
    end_ip: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Dnsmasq:
        self.workdir.mkdir(parents=True, exist_ok=True)
        base = self.workdir / f"dnsmasq-{self.iface}"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "dnsmasq", "--keep-in-foreground",
             "--conf-file=/dev/null", "--port=0", "--bind-interfaces",
             f"--interface={self.iface}", "--except-interface=lo", "--no-ping",
             f"--dhcp-range={self.start_ip},{self.end_ip},1h",
             f"--dhcp-leasefile={base}.leases", f"--pid-file={base}.pid",
             f"--log-facility={base}.log", "--log-dhcp"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def holders(tap: str, netns_pids: Iterable[int]) -> list[int]:
    """Processes (of ``netns_pids``) holding ``/dev/net/tun`` open for TAP ``tap``."""
    found = []
    for pid in netns_pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                with contextlib.suppress(OSError):
                    info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                    if f"iff:\t{tap}\n" in info:
                        found.append(pid)
                        break
    return found


def boot_figure(values: Sequence[float]) -> dict[str, Any]:
    """Median (and all values) of boot-to-lease times, for the suite's figures file."""
    vals = sorted(values)
    mid = len(vals) // 2
    median = vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
    return {"median_s": round(median, 2), "values_s": [round(v, 2) for v in values]}
