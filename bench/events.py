"""Scenario 3: latency from a kernel change to an event subscriber, and the rate sustained.

A separate process inside the daemon's namespace changes the MTU of existing TAPs at a
fixed rate (one raw RTM_NEWLINK each, acknowledged), giving every change a distinct
(TAP, MTU) pair, and reports when it made each; a lean aiormq subscriber (no aio-pika
task per message) bound to the `vnetd.events` exchange matches each `link.changed` to
the change it reports. Both clocks are CLOCK_MONOTONIC (time.perf_counter), so the
latency is one clock's difference. Changes the watcher coalesced into a later event
are counted, not timed. `delivered_per_s` is changes made divided by the time from the
first change to the last event received: the rate the whole pipeline kept up with.
A `host.resync` event during a run is an overrun (the kernel dropped notifications and
vnetd re-read its state).

The changer runs in its own process (a thread here would share the GIL with the
subscriber and, above a few thousand changes per second, measure itself).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiormq
import aiormq.abc

from bench.lab import run
from bench.ways import cpu_seconds
from tests.support.daemon import DaemonProcess

TAPS = 200
MTU_LOW, MTU_HIGH = 1000, 9000

CHANGER = r"""
import json, socket, struct, sys, time
names, rate, seconds = sys.argv[1].split(","), float(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
s.bind((0, 0))
index = [socket.if_nametoindex(n) for n in names]
mtu = 1000
sent = []
start = time.perf_counter()
i = 0
while True:
    now = time.perf_counter()
    if now - start >= seconds:
        break
    if rate > 0:
        due = start + i / rate
        if due > now:
            if due - now > 0.0003:
                time.sleep(due - now - 0.0002)
            while time.perf_counter() < due:
                pass
    k = i % len(names)
    if k == 0:
        mtu = mtu + 1 if mtu < 9000 else 1000
    body = struct.pack("=BxHiII", 0, 0, index[k], 0, 0) + struct.pack("=HHI", 8, 4, mtu)
    t0 = time.perf_counter()
    s.send(struct.pack("=IHHII", 16 + len(body), 16, 0x5, i + 1, 0) + body)
    s.recv(4096)
    sent.append((k, mtu, t0))
    i += 1
json.dump(sent, sys.stdout)
"""


class Subscriber:
    """An exclusive queue bound to one host's events, consumed with aiormq (no_ack)."""

    def __init__(self, amqp_url: str, host_id: str) -> None:
        self.url = amqp_url
        self.host_id = host_id
        self.received: list[tuple[float, bytes]] = []
        self._conn: aiormq.abc.AbstractConnection | None = None

    async def __aenter__(self) -> Subscriber:
        self._conn = await aiormq.connect(self.url)
        ch = await self._conn.channel()
        await ch.basic_qos(prefetch_count=2000)
        q = await ch.queue_declare("", exclusive=True, auto_delete=True)
        assert q.queue is not None
        await ch.queue_bind(q.queue, "vnetd.events", routing_key=f"{self.host_id}.#")
        received = self.received

        async def on(msg: aiormq.abc.DeliveredMessage) -> None:
            received.append((time.perf_counter(), msg.body))

        await ch.basic_consume(q.queue, on, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()


async def _changes(ns: str, names: list[str], rate: float | None,
                   seconds: float) -> list[tuple[int, int, float]]:
    proc = await asyncio.to_thread(
        run, "ip", "netns", "exec", ns, sys.executable, "-c", CHANGER, ",".join(names),
        str(rate or 0), str(seconds), timeout=seconds + 120)
    return [(k, m, t) for k, m, t in json.loads(proc.stdout)]


def _pct(lat: list[float], q: float) -> float | None:
    return round(lat[min(len(lat) - 1, int(len(lat) * q))], 3) if lat else None


def _summary(rate: float | None, sent: list[tuple[int, int, float]], names: list[str],
             got: list[tuple[float, bytes]]) -> dict[str, Any]:
    first_at: dict[tuple[Any, Any], float] = {}  # (name, mtu) -> when its first event arrived
    resyncs = 0
    last_at = sent[-1][2] if sent else 0.0
    for at, raw in got:
        body = json.loads(raw)
        etype = body.get("type", "")
        if etype.endswith("host.resync"):
            resyncs += 1
            continue
        if not etype.endswith("link.changed"):
            continue
        data = body.get("data") or {}
        if "mtu" not in (data.get("changes") or []):
            continue
        first_at.setdefault((body.get("subject"), data.get("mtu")), at)
        last_at = max(last_at, at)
    lat = sorted((first_at[(names[k], m)] - t) * 1000 for k, m, t in sent
                 if (names[k], m) in first_at)
    count = len(sent)
    offered = (sent[-1][2] - sent[0][2]) if count > 1 else 0.0
    span = last_at - sent[0][2] if count else 0.0
    return {
        "rate_asked": rate if rate is not None else "max",
        "rate_sent": round(count / offered, 1) if offered else 0.0,
        "changes": count,
        "events_matched": len(lat),
        "coalesced_or_lost": count - len(lat),
        "delivered_per_s": round(count / span, 1) if span > 0 else 0.0,
        "lag_ms": round((last_at - sent[-1][2]) * 1000, 1) if count else None,
        "p50_ms": _pct(lat, 0.5),
        "p99_ms": _pct(lat, 0.99),
        "max_ms": round(lat[-1], 3) if lat else None,
        "resyncs": resyncs,
    }


async def measure_one(daemon: DaemonProcess, amqp_url: str, rate: float | None,
                      seconds: float, sub: Subscriber) -> dict[str, Any]:
    names = [f"ev{i:03d}" for i in range(TAPS)]
    n0 = len(sub.received)
    cpu0 = cpu_seconds(daemon.pid)
    sent = await _changes(daemon.netns or "", names, rate, seconds)
    # Stragglers: wait until nothing arrived for 0.5 s (at most 30 s).
    deadline = time.perf_counter() + 30
    seen = -1
    while len(sub.received) != seen and time.perf_counter() < deadline:
        seen = len(sub.received)
        await asyncio.sleep(0.5)
    row = _summary(rate, sent, names, sub.received[n0:])
    row["daemon_cpu_ms_per_change"] = round(
        (cpu_seconds(daemon.pid) - cpu0) * 1000 / max(len(sent), 1), 4)
    return row


async def measure(daemon: DaemonProcess, amqp_url: str, rates: list[float | None],
                  seconds: float) -> list[dict[str, Any]]:
    async with Subscriber(amqp_url, daemon.host_id) as sub:
        return [await measure_one(daemon, amqp_url, rate, seconds, sub) for rate in rates]


def make_taps(ns: str) -> None:
    run("ip", "-n", ns, "-batch", "-",
        input="".join(f"tuntap add dev ev{i:03d} mode tap\n" for i in range(TAPS)))
