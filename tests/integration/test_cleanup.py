"""Cleanup on the real kernel, with the daemon inside a test namespace.

Devices "left over by vnetd" are made with `ip` and given vnetd's marker alias
(`vnetd:v1`), as vnetd would have; unowned ones get no alias. A process holding
a TAP open does what QEMU does: open /dev/net/tun and TUNSETIFF on the name.
Grace periods are 0 (or a second or two) through the config, so tests are fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import pytest

from tests.conftest import StartDaemon
from tests.support import netns as ns_mod
from tests.support.daemon import DaemonProcess, vnetd_executable
from tests.support.rpc import RawRpc
from vnetd.net.model import CREATING_GROUP

HOLD_TAP = r"""
import fcntl, os, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", sys.argv[1].encode(), 0x0002 | 0x1000))
print("held", flush=True)
sys.stdin.read()
"""


def cleanup_cfg(**over: Any) -> dict[str, Any]:
    cfg = {"interval_seconds": 0, "tap_grace_seconds": 0, "bridge_grace_seconds": 0,
           "lease_seconds": 30}
    cfg.update(over)
    return cfg


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True)


def owned_tap(ns: str, name: str, *, owned: bool = True, master: str | None = None) -> None:
    ip(ns, "tuntap", "add", "dev", name, "mode", "tap")
    if owned:
        ip(ns, "link", "set", name, "alias", "vnetd:v1")
    if master:
        ip(ns, "link", "set", name, "master", master)
    ip(ns, "link", "set", name, "up")


def owned_bridge(ns: str, name: str) -> None:
    ip(ns, "link", "add", name, "type", "bridge")
    ip(ns, "link", "set", name, "alias", "vnetd:v1")
    ip(ns, "link", "set", name, "up")


def names(ns: str) -> set[str]:
    return set(ns_mod.links(ns))


def state(ns: str) -> list[tuple[Any, ...]]:
    """What cleanup could change (the bridge's own timers tick by themselves)."""
    return [(x["ifindex"], x["ifname"], x.get("ifalias"), x.get("master"), x["flags"], x["mtu"])
            for x in ns_mod.ip_json(ns, "-d", "link", "show")]


@pytest.fixture
def holder() -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def hold(ns: str, name: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", HOLD_TAP, name],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p

    yield hold
    for p in procs:
        p.kill()
        p.communicate()  # reaps it and closes its pipes


@pytest.fixture
async def events(amqp_url: str) -> AsyncIterator[Any]:
    """`await events(host_id)` -> a queue bound to that host's cleanup.removed events."""
    conn = await aio_pika.connect(amqp_url)
    ch = await conn.channel()
    ex = await ch.declare_exchange("vnetd.events", aio_pika.ExchangeType.TOPIC, durable=True)

    async def bind(host_id: str) -> aio_pika.abc.AbstractQueue:
        q = await ch.declare_queue("", exclusive=True)
        await q.bind(ex, routing_key=f"{host_id}.cleanup.removed")
        return q

    yield bind
    await conn.close()


async def drain(q: aio_pika.abc.AbstractQueue, wait: float = 2.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        msg = await q.get(fail=False, no_ack=True)
        if msg is None:
            await asyncio.sleep(0.05)
            continue
        out.append(json.loads(msg.body))
    return out


async def sweep(rpc: RawRpc, d: DaemonProcess, dry_run: bool = False) -> dict[str, Any]:
    reply = await rpc.call(d.host_id, "cleanup.run", {"dry_run": dry_run}, timeout=60)
    assert reply["ok"], reply
    return reply["result"]


def by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["candidates"]}


async def test_taps_idle_removed_held_renewed_and_unowned_kept(
        start_daemon: StartDaemon, netns: str, rpc: RawRpc, holder: Any, events: Any) -> None:
    d = await start_daemon(netns, cleanup=cleanup_cfg())
    q = await events(d.host_id)
    owned_tap(netns, "idle0")
    owned_tap(netns, "held0")
    holder(netns, "held0")
    owned_tap(netns, "mine0", owned=False)
    renewed = await rpc.call(d.host_id, "tap.ensure", {"name": "job0", "up": False})
    assert renewed["ok"], renewed
    assert ns_mod.link(netns, "held0")["operstate"] == "UP"  # carrier: a process has it

    result = await sweep(rpc, d)
    cands = by_name(result)
    assert cands["idle0"]["action"] == "removed"
    assert cands["idle0"]["rule"] == "tap.idle"
    assert cands["job0"]["action"] == "kept"
    assert cands["job0"]["reason"].startswith("leased by a job")
    assert "held0" not in cands and "mine0" not in cands  # in use / not ours: no candidates
    assert result["in_use"] == 1
    assert names(netns) >= {"held0", "mine0", "job0"}
    assert "idle0" not in names(netns)
    assert ns_mod.link(netns, "mine0").get("ifalias") is None  # not even marked

    got = await drain(q)
    assert [(e["type"], e["subject"], e["data"]["kind"]) for e in got] == [
        ("io.vnetd.cleanup.removed", "idle0", "tap")]

    again = await sweep(rpc, d)
    assert again["removed"] == 0
    assert names(netns) >= {"held0", "mine0", "job0"}


async def test_bridges_empty_removed_with_port_kept(
        start_daemon: StartDaemon, netns: str, rpc: RawRpc) -> None:
    d = await start_daemon(netns, cleanup=cleanup_cfg(taps=False))
    owned_bridge(netns, "bre")
    owned_bridge(netns, "brp")
    owned_tap(netns, "p0", owned=False, master="brp")
    result = by_name(await sweep(rpc, d))
    assert result["bre"]["action"] == "removed"
    assert result["bre"]["rule"] == "bridge.empty"
    assert "brp" not in result
    assert names(netns) >= {"brp", "p0"}
    assert "bre" not in names(netns)


async def test_dry_run_changes_nothing(start_daemon: StartDaemon, netns: str,
                                       rpc: RawRpc, events: Any) -> None:
    d = await start_daemon(netns, cleanup=cleanup_cfg(tap_grace_seconds=0.5))
    q = await events(d.host_id)
    owned_tap(netns, "t0")
    owned_bridge(netns, "b0")
    before = state(netns)
    first = by_name(await sweep(rpc, d, dry_run=True))  # the idle clock starts at first sight
    assert first["t0"]["action"] == "kept"
    assert first["b0"]["action"] == "would_remove"
    await asyncio.sleep(0.6)
    result = await sweep(rpc, d, dry_run=True)
    assert {c["name"]: c["action"] for c in result["candidates"]} == {
        "t0": "would_remove", "b0": "would_remove"}
    assert state(netns) == before  # not even a clock marker in an alias
    assert await drain(q, 1.0) == []


async def test_grace_clock_and_restart_keep(start_daemon: StartDaemon, netns: str,
                                            rpc: RawRpc) -> None:
    d = await start_daemon(netns, cleanup=cleanup_cfg(tap_grace_seconds=1.5))
    owned_tap(netns, "g0")
    first = by_name(await sweep(rpc, d))["g0"]
    assert first["action"] == "kept"
    assert "grace" in first["reason"]
    assert ns_mod.link(netns, "g0")["ifalias"].startswith("vnetd:v1 idle=")  # clock stored
    await asyncio.sleep(1.6)
    await d.stop()
    await d.start()  # a restart restarts the clock: keeps, although the marker is old
    assert by_name(await sweep(rpc, d))["g0"]["action"] == "kept"
    assert "g0" in names(netns)
    await asyncio.sleep(1.6)
    assert by_name(await sweep(rpc, d))["g0"]["action"] == "removed"


def vnetd_cleanup(d: DaemonProcess, *args: str) -> dict[str, Any]:
    proc = subprocess.run([vnetd_executable(), "cleanup", "--config", str(d.config_path),
                           "--json", *args], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    data: dict[str, Any] = json.loads(proc.stdout[proc.stdout.index("{\n"):])
    return data


async def test_vnetd_cleanup_asks_the_daemon_else_runs_locally(
        start_daemon: StartDaemon, netns: str) -> None:
    d = await start_daemon(netns, cleanup=cleanup_cfg())
    owned_tap(netns, "c0")
    owned_tap(netns, "c1")
    dry = await asyncio.to_thread(vnetd_cleanup, d, "--dry-run")
    assert dry["ran"] == "daemon"
    assert by_name(dry)["c0"]["action"] == "would_remove"
    assert names(netns) >= {"c0", "c1"}
    done = await asyncio.to_thread(vnetd_cleanup, d)
    assert done["ran"] == "daemon"
    assert {n for n, c in by_name(done).items() if c["action"] == "removed"} == {"c0", "c1"}
    owned_tap(netns, "c2")
    await d.stop()
    local = await asyncio.to_thread(vnetd_cleanup, d)
    assert local["ran"] == "local"
    assert by_name(local)["c2"]["action"] == "removed"
    assert "c2" not in names(netns)


RACE_ITERATIONS = int(os.environ.get("VNETD_CLEANUP_RACE_ITERATIONS", "300"))


@pytest.mark.timeout(1800)
async def test_plug_racing_a_zero_grace_sweep_never_loses_a_device(
        start_daemon: StartDaemon, netns: str, rpc: RawRpc) -> None:
    """tap.ensure + port.attach against sweeps with grace 0: a device whose jobs
    succeeded is still there, attached, after them (its lease outlives the test)."""
    d = await start_daemon(netns, cleanup=cleanup_cfg(interval_seconds=0.02,
                                                      lease_seconds=3600))
    n = RACE_ITERATIONS
    per_bridge = 500  # a Linux bridge takes at most 1024 ports (BR_MAX_PORTS)
    bridges = [f"brr{k}" for k in range((n + per_bridge - 1) // per_bridge)]
    for br in bridges:
        assert (await rpc.call(d.host_id, "bridge.ensure", {"name": br}))["ok"]
    # Every plugged name first exists as a leftover: owned, idle, past its grace, so
    # each sweep wants it gone, right while a job takes it over.
    batch = "".join(f"tuntap add dev r{i} mode tap\nlink set r{i} alias vnetd:v1\n"
                    for i in range(n))
    batch += "".join(f"tuntap add dev x{i} mode tap\nlink set x{i} alias vnetd:v1\n"
                     for i in range(n // 10))  # decoys nobody plugs: must go
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input=batch, text=True, check=True)

    stop = asyncio.Event()
    sweeps: list[dict[str, Any]] = []
    recreated: list[str] = []

    async def sweeper() -> None:
        async with RawRpc(rpc.url) as own:
            while not stop.is_set():
                sweeps.append(await sweep(own, d))

    async def plug(i: int, sem: asyncio.Semaphore) -> tuple[str, bool]:
        async with sem:
            name = f"r{i}"
            t = await rpc.call(d.host_id, "tap.ensure", {"name": name, "up": False}, timeout=60)
            if not t["ok"]:
                return name, False
            if t["result"]["created"]:  # a sweep had removed the leftover just before
                recreated.append(name)
            a = await rpc.call(d.host_id, "port.attach",
                               {"name": name, "bridge": bridges[i // per_bridge]}, timeout=60)
            return name, bool(a["ok"])

    task = asyncio.create_task(sweeper())
    sem = asyncio.Semaphore(16)
    try:
        results = await asyncio.gather(*(plug(i, sem) for i in range(n)))
    finally:
        stop.set()
        await task
    final = await sweep(rpc, d)  # one more, after every job answered
    links = ns_mod.links(netns)
    plugged = [name for name, ok in results if ok]
    lost = [name for name in plugged if name not in links
            or links[name].get("master") != bridges[int(name[1:]) // per_bridge]]
    removed = sum(s["removed"] for s in [*sweeps, final])
    print(f"race: {n} iterations, {len(plugged)} plugged ok, {len(recreated)} leftovers "
          f"removed by a sweep right before their job, {len(sweeps) + 1} sweeps by "
          f"cleanup.run (+ periodic every 20 ms), {removed} removals by cleanup.run")
    assert lost == [], f"{len(lost)} devices lost after their jobs succeeded: {lost[:10]}"
    assert len(plugged) == n, [r for r in results if not r[1]][:10]
    assert not [x for x in links if x.startswith("x")], "the decoys were never removed"


@pytest.mark.parametrize("point", ["after_create", "after_mark"])
async def test_half_created_bridge_whose_job_never_returns_is_removed(
        start_daemon: StartDaemon, netns: str, rpc: RawRpc, events: Any, point: str) -> None:
    """A kill inside bridge creation leaves br0 in CREATING_GROUP; its job stays in the
    dead daemon's queue (as if dead-lettered), so no ensure finishes it: the sweep of
    another daemon on the namespace removes it, and leaves foreign devices alone."""
    dead = await start_daemon(netns, env={"VNETD_FAILPOINTS": f"{point}:bridge"})
    call = asyncio.create_task(rpc.call(dead.host_id, "bridge.ensure", {"name": "br0"},
                                        timeout=60))
    for _ in range(300):
        if not dead.running:
            break
        await asyncio.sleep(0.05)
    assert dead.returncode == -9
    call.cancel()
    left = ns_mod.link(netns, "br0")
    assert left is not None and left["group"] == str(CREATING_GROUP)
    ip(netns, "link", "add", "brf", "type", "bridge")
    ip(netns, "link", "set", "brf", "group", "42")  # someone else's group, unowned
    ip(netns, "link", "add", "brx", "type", "bridge")  # unowned, default group

    d = await start_daemon(netns, cleanup=cleanup_cfg(half_created_grace_seconds=0))
    q = await events(d.host_id)
    dry = by_name(await sweep(rpc, d, dry_run=True))
    assert dry["br0"] == {**dry["br0"], "rule": "half_created", "action": "would_remove"}
    assert "br0" in names(netns)
    result = by_name(await sweep(rpc, d))
    assert result["br0"]["action"] == "removed"
    assert "brf" not in result and "brx" not in result
    assert "br0" not in names(netns)
    assert names(netns) >= {"brf", "brx"}
    assert ns_mod.link(netns, "brf")["group"] == "42"
    got = await drain(q)
    assert [(e["subject"], e["data"]["kind"], e["data"]["rule"]) for e in got] == [
        ("br0", "bridge", "half_created")]
