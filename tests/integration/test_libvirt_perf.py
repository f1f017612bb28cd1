"""Overhead of vnetd over direct libvirt-python for define+start+destroy+undefine.

Both ways run in the same test against the same private libvirtd, interleaved round
by round, with the same network XML (vnetd's, marker included); medians compared.
The figure is printed (PERF ...) and written to the libvirtd's directory.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import subprocess
import time
from collections import Counter
from typing import Any

import libvirt
import pytest
from pydantic import TypeAdapter

from tests.conftest import StartDaemon
from tests.integration.test_libvirt import (
    ok,
    routed,
    uniq,
)
from tests.support.libvirtd import PrivateLibvirtd
from tests.support.rpc import RawRpc
from vnetd.contract.network import NetworkSpec
from vnetd.virt import xml as vxml

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]


ROUNDS = 15


async def test_overhead_over_direct_libvirt(start_daemon: StartDaemon,
                                            libvirtd: PrivateLibvirtd, rpc: RawRpc) -> None:
    d = await start_daemon(netns=libvirtd.netns, libvirt={"enabled": True, "uri": libvirtd.uri})
    conn = await asyncio.to_thread(libvirt.open, libvirtd.uri)
    spec_t: TypeAdapter[Any] = TypeAdapter(NetworkSpec)

    steps: dict[str, list[float]] = {}

    def lap(key: str, t: float) -> float:
        now = time.perf_counter()
        steps.setdefault(key, []).append(now - t)
        return now

    def direct(name: str, spec: dict[str, Any]) -> float:
        text = vxml.to_string(vxml.with_marker(vxml.build(name, spec_t.validate_python(spec)),
                                               "bench"))
        t0 = t = time.perf_counter()
        net = conn.networkDefineXML(text)
        t = lap("direct.define", t)
        net.create()
        t = lap("direct.start", t)
        net.destroy()
        t = lap("direct.destroy", t)
        net.undefine()
        t = lap("direct.undefine", t)
        return t - t0

    async def through_vnetd(name: str, spec: dict[str, Any]) -> float:
        t0 = t = time.perf_counter()
        await ok(rpc, d, "network.define", name=name, spec=spec)
        t = lap("vnetd.define", t)
        await ok(rpc, d, "network.start", name=name)
        t = lap("vnetd.start", t)
        await ok(rpc, d, "network.destroy", name=name)
        t = lap("vnetd.destroy", t)
        await ok(rpc, d, "network.undefine", name=name)
        t = lap("vnetd.undefine", t)
        return t - t0

    try:
        floor = []  # the contract's own round trip, no libvirt: host.health
        for _ in range(30):
            t = time.perf_counter()
            await ok(rpc, d, "host.health")
            floor.append(time.perf_counter() - t)
        vnetd_s: list[float] = []
        direct_s: list[float] = []
        for i in range(ROUNDS + 1):
            spec = routed("nat", 60, "vbperf")
            a = await through_vnetd(uniq("pv"), spec)
            b = await asyncio.to_thread(direct, uniq("pd"), spec)
            if i:  # round 0 warms both paths up
                vnetd_s.append(a)
                direct_s.append(b)
        mv, md = statistics.median(vnetd_s), statistics.median(direct_s)
        report = {"rounds": ROUNDS, "vnetd_ms_median": mv * 1000, "direct_ms_median": md * 1000,
                  "overhead_pct": (mv / md - 1) * 100,
                  "rpc_floor_ms_median": statistics.median(floor) * 1000,
                  "step_ms_median": {k: round(statistics.median(v[1:]) * 1000, 2)
                                     for k, v in sorted(steps.items())},
                  "vnetd_ms": [round(x * 1000, 1) for x in vnetd_s],
                  "direct_ms": [round(x * 1000, 1) for x in direct_s]}
        print("PERF", json.dumps(report))
        (libvirtd.root / "perf.json").write_text(json.dumps(report))
        # The goal is < 5 %; on this shared 2-core machine the bound checked is looser.
        assert report["overhead_pct"] < 25.0, report
    finally:
        await asyncio.to_thread(conn.close)


def _virt_admin(libvirtd: PrivateLibvirtd, *args: str) -> None:
    uri = f"libvirtd:///system?socket={libvirtd.root / 'sock' / 'libvirt-admin-sock'}"
    subprocess.run(["virt-admin", "-c", uri, *args], check=True, capture_output=True,
                   timeout=30)


async def test_calls_to_libvirtd_per_cycle(start_daemon: StartDaemon,
                                           libvirtd: PrivateLibvirtd, rpc: RawRpc) -> None:
    """define + start + destroy + undefine through vnetd: the calls libvirtd receives from
    the daemon (its handlers' and its watcher's), counted in libvirtd's own log. Each op
    reads the network once (4 calls, 1 more for a lookup) and makes its change; the
    watcher publishes the 4 events of these changes without calling libvirtd (44 calls
    per cycle before: 12 lookups, the state read again after each change and for each
    event)."""
    d = await start_daemon(netns=libvirtd.netns, libvirt={"enabled": True, "uri": libvirtd.uri})
    log = libvirtd.root / "rpc-count.log"
    cycles = 3
    names = [uniq("pc") for _ in range(cycles)]
    _virt_admin(libvirtd, "daemon-log-filters", "1:rpc.netserverclient")
    _virt_admin(libvirtd, "daemon-log-outputs", f"1:file:{log} 3:stderr")
    try:
        for name in names:
            xml = f"<network><name>{name}</name><bridge name='vb{name}'/></network>"
            await ok(rpc, d, "network.define", name=name, xml=xml)
            await ok(rpc, d, "network.start", name=name)
            await ok(rpc, d, "network.destroy", name=name)
            await ok(rpc, d, "network.undefine", name=name)
        await asyncio.sleep(1.0)  # the watcher has handled the last events
    finally:
        _virt_admin(libvirtd, "daemon-log-outputs", "3:stderr")
        _virt_admin(libvirtd, "daemon-log-filters", "")
    calls: dict[str, Counter[int]] = {}
    for m in re.finditer(r"RPC_SERVER_CLIENT_MSG_RX: client=(\S+) .* prog=536903814 .* "
                         r"proc=(\d+) ", log.read_text(errors="replace")):
        calls.setdefault(m.group(1), Counter())[int(m.group(2))] += 1
    define_proc = 41  # REMOTE_PROC_NETWORK_DEFINE_XML
    ours = [c for c in calls.values() if c[define_proc] == cycles]
    assert len(ours) == 1, calls
    per_cycle = sum(ours[0].values()) / cycles
    print("PERF", json.dumps({"libvirt_calls_per_cycle": per_cycle, "by_proc": ours[0]}))
    # define 2 (define, its XML), start 5, destroy 6 (and the XML in force after), undefine
    # 5; the 4 events: 0.
    assert per_cycle <= 18, ours[0]
