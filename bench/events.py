"""Scenario 3: latency from a kernel change to an event subscriber, and the first overrun.

A thread inside the daemon's namespace changes the MTU of existing TAPs at a fixed rate
(one raw RTM_NEWLINK each, acknowledged), giving every change a distinct (TAP, MTU)
pair; a subscriber bound to the `vnetd.events` exchange matches each `link.changed` to
the change it reports. Changes the watcher coalesced into a later event are counted,
not timed. A `host.resync` event during a run is an overrun (the kernel dropped
notifications and vnetd re-read its state).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bench.lab import run
from bench.ways import cpu_seconds
from tests.support.daemon import DaemonProcess
from vnetd.net import fastlink, rtnl
from vnetd.net.model import LinkChange
from vnetd.net.netns import NamespaceWorker

TAPS = 20
MTU_LOW, MTU_HIGH = 1000, 9000


def _changer(sock: socket.socket, indexes: list[tuple[str, int]], rate: float | None,
             seconds: float, sent: dict[tuple[str, int], float], stop: threading.Event) -> int:
    """Send MTU changes at `rate` per second (None: as fast as acks come back)."""
    seq = 0
    start = time.monotonic()
    count = 0
    mtu = MTU_LOW
    while not stop.is_set():
        now = time.monotonic()
        if now - start >= seconds:
            break
        if rate is not None:
            due = start + count / rate
            if due > now:
                time.sleep(due - now)
        name, index = indexes[count % len(indexes)]
        if count % len(indexes) == 0:
            mtu = mtu + 1 if mtu < MTU_HIGH else MTU_LOW
        body = rtnl.change_body(index, LinkChange(mtu=mtu))
        seq += 1
        header = struct.pack("=IHHII", 16 + len(body), rtnl.RTM_NEWLINK,
                             rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK, seq, 0)
        sent[(name, mtu)] = time.monotonic()
        sock.send(header + body)
        sock.recv(65536)  # the ack
        count += 1
    return count


async def measure(daemon: DaemonProcess, amqp_url: str, rates: list[float | None],
                  seconds: float) -> list[dict[str, Any]]:
    ns = daemon.netns
    out = json.loads(run("ip", "-n", ns, "-j", "link", "show").stdout)
    taps = [(e["ifname"], e["ifindex"]) for e in out if e["ifname"].startswith("ev")]
    assert len(taps) == TAPS, taps
    worker = NamespaceWorker(ns)
    sock = worker.call(fastlink.FastLink.open_socket)
    worker.close()
    sock.bind((0, 0))
    results = []
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange("vnetd.events", aio_pika.ExchangeType.TOPIC,
                                                  durable=True, passive=True)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=f"{daemon.host_id}.#")
        state: dict[str, Any] = {}

        async def on_event(message: AbstractIncomingMessage) -> None:
            now = time.monotonic()
            body = json.loads(message.body)
            etype = body.get("type", "")
            if etype.endswith("host.resync"):
                state["resyncs"] += 1
                return
            if not etype.endswith("link.changed"):
                return
            data = body.get("data") or {}
            if "mtu" not in (data.get("changes") or []):
                return
            t = state["sent"].get((body.get("subject"), data.get("mtu")))
            if t is not None:
                state["latencies"].append((now - t) * 1000)

        await queue.consume(on_event, no_ack=True)
        for rate in rates:
            state.update(sent={}, latencies=[], resyncs=0)
            stop = threading.Event()
            cpu0 = cpu_seconds(daemon.pid)
            t0 = time.monotonic()
            count = await asyncio.to_thread(_changer, sock, taps, rate, seconds, state["sent"],
                                            stop)
            elapsed = time.monotonic() - t0
            await asyncio.sleep(1.0)  # stragglers
            lat = sorted(state["latencies"])
            results.append({
                "rate_asked": rate if rate is not None else "max",
                "rate_sent": round(count / elapsed, 1),
                "changes": count,
                "events_matched": len(lat),
                "coalesced_or_lost": count - len(lat),
                "p50_ms": round(lat[len(lat) // 2], 3) if lat else None,
                "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3) if lat
                else None,
                "max_ms": round(lat[-1], 3) if lat else None,
                "resyncs": state["resyncs"],
                "daemon_cpu_ms_per_change": round(
                    (cpu_seconds(daemon.pid) - cpu0) * 1000 / max(count, 1), 3),
            })
    finally:
        await connection.close()
        sock.close()
    return results


def make_taps(ns: str) -> None:
    run("ip", "-n", ns, "-batch", "-",
        input="".join(f"tuntap add dev ev{i:02d} mode tap\n" for i in range(TAPS)))
