"""Scenario 5: a libvirt network's define + start + destroy + undefine, through vnetd and
directly with libvirt-python (and, with --before, through an older vnetd).

Each cycle is four calls on one isolated network (a bridge libvirt creates and
removes, no addresses: no dnsmasq), with the same XML both ways, one cycle at a time;
the ways alternate per repetition. vnetd's overhead is (its time - libvirt-python's) /
libvirt-python's.

Every way has a private libvirtd of its own (tests/support/libvirtd.py) in a namespace
of its own, and a vnetd way's daemon runs in its libvirtd's namespace: no way pays for
another way's event subscribers (a vnetd's watcher reacts to every lifecycle event of
its libvirtd, and its netlink watcher to every bridge there) or counts their libvirtd
CPU as its own. Server CPU per cycle: libvirtd's, plus the daemon's for a vnetd way.

`RpcLog` counts the calls each libvirtd receives per cycle from its own log (its
RPC_SERVER_CLIENT_MSG_RX lines, keepalives left out), in a pass of its own that is not
timed: every call a vnetd way makes, its handlers' and its watcher's, against the four
of libvirt-python.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import libvirt

from bench.ways import Rpc, Run, WayError
from tests.support.libvirtd import PrivateLibvirtd

OPS = ("network.define", "network.start", "network.destroy", "network.undefine")
REMOTE_PROGRAM = 0x20008086  # libvirt's remote protocol (keepalive is 0x6b656570)
SETUP_PROCS = {1: "connectOpen", 2: "connectClose", 60: "connectSupportsFeature",
               66: "authList"}
"""A connection's own calls (libvirt-python's way opens one per run): not per cycle."""
PROCS = {39: "networkCreate", 40: "networkLookupByUUID", 41: "networkDefineXML",
         42: "networkDestroy", 43: "networkGetXMLDesc", 44: "networkGetAutostart",
         45: "networkSetAutostart", 46: "networkLookupByName", 49: "networkUndefine",
         152: "networkIsActive", 153: "networkIsPersistent",
         283: "connectListAllNetworks"}
_RX = re.compile(r"RPC_SERVER_CLIENT_MSG_RX: .* prog=(\d+) .* proc=(\d+) ")


def network_xml(name: str, bridge: str) -> str:
    return (f"<network><name>{name}</name><bridge name='{bridge}' stp='off'/>"
            "</network>")


def names_for(prefix: str, n: int) -> list[tuple[str, str]]:
    return [(f"bn{prefix}{i:04d}", f"vb{prefix}{i:04d}") for i in range(n)]


Steps = dict[str, list[float]]
"""Milliseconds of each of the four steps, by op name."""


def direct_way(uri: str, nets: list[tuple[str, str]], steps: Steps | None = None) -> Run:
    """libvirt-python, one connection, the four calls per network (in a thread)."""
    conn = libvirt.open(uri)
    steps = {} if steps is None else steps
    try:
        lat: list[float] = []
        t0 = time.perf_counter()
        for name, bridge in nets:
            t = time.perf_counter()
            net = conn.networkDefineXML(network_xml(name, bridge))
            t1 = time.perf_counter()
            net.create()
            t2 = time.perf_counter()
            net.destroy()
            t3 = time.perf_counter()
            net.undefine()
            t4 = time.perf_counter()
            lat.append((t4 - t) * 1000)
            for op, a, b in zip(OPS, (t, t1, t2, t3), (t1, t2, t3, t4), strict=True):
                steps.setdefault(op, []).append((b - a) * 1000)
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    return Run("libvirt", "libvirt-python", len(nets), seconds, 1, lat)


async def vnetd_way(rpc: Rpc, host_id: str, nets: list[tuple[str, str]],
                    way: str = "vnetd", steps: Steps | None = None) -> Run:
    lat: list[float] = []
    steps = {} if steps is None else steps
    t0 = time.perf_counter()
    for name, bridge in nets:
        t = time.perf_counter()
        for op in OPS:
            args: dict[str, Any] = {"name": name}
            if op == "network.define":
                args["xml"] = network_xml(name, bridge)
            ts = time.perf_counter()
            reply = await rpc.call(host_id, op, args, timeout=60.0)
            steps.setdefault(op, []).append((time.perf_counter() - ts) * 1000)
            if reply.get("ok") is not True:
                raise WayError(f"vnetd {op} {name}: {str(reply)[:300]}")
        lat.append((time.perf_counter() - t) * 1000)
    return Run("libvirt", way, len(nets), time.perf_counter() - t0, 1, lat)


def start_libvirtd(root: Path, netns: str) -> PrivateLibvirtd:
    """In `netns` (the benchmark's namespace, which the caller deletes afterwards)."""
    d = PrivateLibvirtd(root, netns=netns)
    try:
        d.start()
    except BaseException:
        d.kill()
        raise
    return d


async def in_thread_direct(uri: str, nets: list[tuple[str, str]],
                           steps: Steps | None = None) -> Run:
    return await asyncio.to_thread(direct_way, uri, nets, steps)


def job_durations(log_text: str) -> dict[str, list[float]]:
    """Each job's duration_ms by op, from a daemon's JSON log ("job" records)."""
    out: dict[str, list[float]] = {}
    for line in log_text.splitlines():
        if '"duration_ms"' not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == "job":
            out.setdefault(str(rec.get("op")), []).append(float(rec["duration_ms"]))
    return out


def children_cpu(pid: int) -> float:
    """CPU seconds of `pid`'s children it has waited for (libvirtd's iptables runs: the same
    for every way, and not in its own figure)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each live thread of `pid`, by thread id (schedstat: to the
    nanosecond, which a few milliseconds per cycle need)."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError):  # the thread ended meanwhile
            continue
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Python's names of the threads of `pid` (py-spy dump, when installed), a pool's
    threads under one name (`libvirt_3` -> `libvirt`)."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        return {}
    proc = subprocess.run([str(spy), "dump", "--json", "--nonblocking", "--pid", str(pid)],
                          capture_output=True, text=True, timeout=30, check=False)
    try:
        threads = json.loads(proc.stdout)
    except ValueError:
        return {}
    return {int(t["os_thread_id"]): re.sub(r"_\d+$", "", str(t.get("thread_name") or "?"))
            for t in threads if t.get("os_thread_id")}


class RpcLog:
    """The calls a private libvirtd receives, from its own log (set through its admin
    socket with virt-admin, only while counting: logging costs libvirtd CPU)."""

    def __init__(self, lv: PrivateLibvirtd) -> None:
        self.admin = f"libvirtd:///system?socket={lv.root / 'sock' / 'libvirt-admin-sock'}"
        self.path = lv.root / "rpc-count.log"

    def _admin(self, *args: str) -> None:
        subprocess.run(["virt-admin", "-c", self.admin, *args], check=True,
                       capture_output=True, text=True, timeout=30)

    def on(self) -> None:
        self.path.write_text("")
        self._admin("daemon-log-filters", "1:rpc.netserverclient")
        self._admin("daemon-log-outputs", f"1:file:{self.path} 3:stderr")

    def off(self) -> Counter[str]:
        """Stop logging; the calls received since `on`, by procedure (a connection's
        set-up and close left out)."""
        self._admin("daemon-log-outputs", "3:stderr")
        self._admin("daemon-log-filters", "")
        calls: Counter[str] = Counter()
        for m in _RX.finditer(self.path.read_text(errors="replace")):
            if int(m.group(1)) == REMOTE_PROGRAM and int(m.group(2)) not in SETUP_PROCS:
                proc = int(m.group(2))
                calls[PROCS.get(proc, f"proc {proc}")] += 1
        return calls
