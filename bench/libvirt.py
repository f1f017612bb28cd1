"""Scenario 5: a libvirt network's define + start + destroy + undefine, through vnetd and
directly with libvirt-python, on the same private libvirtd (tests/support/libvirtd.py).

Each cycle is four calls on one isolated network (a bridge libvirt creates and
removes, no addresses: no dnsmasq), one cycle at a time; the two ways alternate per
repetition. vnetd's overhead is (its time - libvirt-python's) / libvirt-python's.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import libvirt

from bench.ways import Rpc, Run, WayError
from tests.support.libvirtd import PrivateLibvirtd

OPS = ("network.define", "network.start", "network.destroy", "network.undefine")


def network_xml(name: str, bridge: str) -> str:
    return (f"<network><name>{name}</name><bridge name='{bridge}' stp='off'/>"
            "</network>")


def names_for(prefix: str, n: int) -> list[tuple[str, str]]:
    return [(f"bn{prefix}{i:04d}", f"vb{prefix}{i:04d}") for i in range(n)]


def direct_way(uri: str, nets: list[tuple[str, str]]) -> Run:
    """libvirt-python, one connection, the four calls per network (in a thread)."""
    conn = libvirt.open(uri)
    try:
        lat: list[float] = []
        t0 = time.perf_counter()
        for name, bridge in nets:
            t = time.perf_counter()
            net = conn.networkDefineXML(network_xml(name, bridge))
            net.create()
            net.destroy()
            net.undefine()
            lat.append((time.perf_counter() - t) * 1000)
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    return Run("libvirt", "libvirt-python", len(nets), seconds, 1, lat)


async def vnetd_way(rpc: Rpc, host_id: str, nets: list[tuple[str, str]]) -> Run:
    lat: list[float] = []
    t0 = time.perf_counter()
    for name, bridge in nets:
        t = time.perf_counter()
        for op in OPS:
            args: dict[str, Any] = {"name": name}
            if op == "network.define":
                args["xml"] = network_xml(name, bridge)
            reply = await rpc.call(host_id, op, args, timeout=60.0)
            if reply.get("ok") is not True:
                raise WayError(f"vnetd {op} {name}: {str(reply)[:300]}")
        lat.append((time.perf_counter() - t) * 1000)
    return Run("libvirt", "vnetd", len(nets), time.perf_counter() - t0, 1, lat)


def start_libvirtd(root: Path, netns: str) -> PrivateLibvirtd:
    """In `netns` (the benchmark's namespace, which the caller deletes afterwards)."""
    d = PrivateLibvirtd(root, netns=netns)
    try:
        d.start()
    except BaseException:
        d.kill()
        raise
    return d


async def in_thread_direct(uri: str, nets: list[tuple[str, str]]) -> Run:
    return await asyncio.to_thread(direct_way, uri, nets)
