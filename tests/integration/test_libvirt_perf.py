"""Overhead of vnetd over direct libvirt-python for define+start+destroy+undefine.

Both ways run in the same test against the same private libvirtd, interleaved round
by round, with the same network XML (vnetd's, marker included); medians compared.
The figure is printed (PERF ...) and written to the libvirtd's directory.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
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
