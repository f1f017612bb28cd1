"""A simulated fleet of hypervisors inside the test lab: an underlay, hosts, guests.

- an underlay namespace with one bridge (`ul`), the "top-of-rack switch";
- N host namespaces, each joined to it by a veth (`u0` inside the host,
  198.51.100.(10+i)/24, TEST-NET-2: only ever inside these namespaces), each
  with its own vnetd (started by the caller's `start_daemon`);
- guests: namespaces with one veth (`eth0`) whose host end (`gv...`, named
  attachable in the daemons' policy) is attached to a vnetd bridge.

Everything is created through the caller's namespace factory, so it is deleted
with it (also on failure). Nothing touches the machine's root namespace.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.netns import run_in

UNDERLAY_PREFIX = "198.51.100."
GUEST_PORTS = "gv*"
_guest_ids = itertools.count(1)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def quiet_ipv6(ns: str) -> None:
    """No IPv6 (router solicitations, DAD) in a namespace: counters then count only
    what a test sends."""
    for key in ("all", "default"):
        run_in(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")


@dataclass
class FleetHost:
    index: int
    netns: str
    address: str
    daemon: Any = None
    """tests.support.daemon.DaemonProcess (started by the caller)."""

    @property
    def host_id(self) -> str:
        return str(self.daemon.host_id)


@dataclass
class Guest:
    netns: str
    host: FleetHost
    port: str
    ip: str
    mac: str


@dataclass
class Fleet:
    new_netns: Callable[[], str]
    underlay: str = ""
    hosts: list[FleetHost] = field(default_factory=list)
    guests: list[Guest] = field(default_factory=list)

    def build(self, n: int) -> list[FleetHost]:
        """The underlay and `n` host namespaces, wired (no daemons yet)."""
        self.underlay = self.new_netns()
        ip("-n", self.underlay, "link", "add", "ul", "type", "bridge")
        ip("-n", self.underlay, "link", "set", "ul", "up")
        quiet_ipv6(self.underlay)
        for i in range(1, n + 1):
            ns = self.new_netns()
            quiet_ipv6(ns)
            address = f"{UNDERLAY_PREFIX}{10 + i}"
            ip("-n", self.underlay, "link", "add", f"h{i}", "type", "veth", "peer", "name", "u0",
               "netns", ns)
            ip("-n", self.underlay, "link", "set", f"h{i}", "master", "ul", "up")
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", "u0")
            ip("-n", ns, "link", "set", "u0", "up")
            self.hosts.append(FleetHost(i, ns, address))
        return self.hosts

    async def start_daemons(self, start: Callable[..., Awaitable[Any]]) -> None:
        """One vnetd per host, all at once (`start` is the start_daemon fixture)."""
        daemons = await asyncio.gather(*(
            start(netns=h.netns, policy={"attachable": [GUEST_PORTS], "protected": ["lo"]})
            for h in self.hosts))
        for host, daemon in zip(self.hosts, daemons, strict=True):
            host.daemon = daemon

    def add_guest(self, host: FleetHost, ip_address: str, mac: str) -> Guest:
        """A guest namespace with eth0 (ip/24, mac); its host end `gvN` stays unattached."""
        ns = self.new_netns()
        quiet_ipv6(ns)
        port = f"gv{next(_guest_ids)}"
        ip("-n", host.netns, "link", "add", port, "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        ip("-n", ns, "link", "set", "eth0", "address", mac)
        ip("-n", ns, "addr", "add", f"{ip_address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", host.netns, "link", "set", port, "up")
        guest = Guest(ns, host, port, ip_address, mac)
        self.guests.append(guest)
        return guest


def ping(guest: Guest, target: str, count: int = 3, *, interval: float = 0.2,
         timeout: float = 1.0) -> tuple[int, int]:
    """(sent, received) of `ping` from the guest."""
    proc = run_in(guest.netns, "ping", "-n", "-q", "-c", str(count), "-i", str(interval),
                  "-W", str(timeout), target, check=False, timeout=count * interval + 30)
    return ping_counts(proc.stdout)


def ping_counts(text: str) -> tuple[int, int]:
    found = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", text)
    if found is None:
        raise AssertionError(f"no ping summary in: {text!r}")
    return int(found.group(1)), int(found.group(2))


def rx_packets(ns: str, dev: str) -> int:
    out = run_in(ns, "ip", "-j", "-s", "link", "show", "dev", dev).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


def fdb_rows(ns: str, dev: str) -> list[dict[str, Any]]:
    out = run_in(ns, "bridge", "-j", "fdb", "show", "dev", dev).stdout.strip()
    return [r for r in json.loads(out or "[]") if "self" in r.get("flags", [])]


def remotes(ns: str, dev: str) -> set[str]:
    return {r["dst"] for r in fdb_rows(ns, dev) if r["mac"] == "00:00:00:00:00:00"}


class Capture:
    """`tcpdump` on one device of a namespace while a block runs: the packets it saw."""

    def __init__(self, ns: str, dev: str, bpf: str) -> None:
        self.cmd = ["ip", "netns", "exec", ns, "tcpdump", "-i", dev, "-n", "-l", "-U", bpf]
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def __enter__(self) -> Capture:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stderr is not None
        said = []
        for line in self.proc.stderr:  # "listening on eth0, ..." once it captures
            if "listening on" in line:
                return self
            said.append(line)
        # tcpdump ended without capturing (not installed: scripts/setup.sh --test
        # installs it): fail saying so, not later with an empty capture.
        raise RuntimeError(f"{' '.join(self.cmd)} did not start: {''.join(said).strip()}")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        time.sleep(0.5)  # the last packets on their way through tcpdump's pipe
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        self.lines = [line for line in out.splitlines() if line.strip()]
