"""Scenario 3: latency from a kernel change to an event subscriber, and the rate sustained.

A separate process inside the daemon's namespace changes the MTU of existing TAPs at a
fixed rate, giving every change a distinct (TAP, MTU) pair, and reports when it made
each. It is pipelined so that it is not the limit: every millisecond it sends the
changes due as one datagram of RTM_NEWLINK requests without NLM_F_ACK (the kernel
applies them in order inside the send and answers only errors; one acknowledged
request at the end collects those), about 20,000 changes/s here on a loaded machine
against about 6,000/s one acknowledged request at a time. A lean subscriber
(bench/lean_amqp.py: about 0.01 ms of CPU per message, against 0.09 for aiormq's
consumer) bound to the `vnetd.events` exchange matches each `link.changed` to the
change it reports. Both clocks are CLOCK_MONOTONIC (time.perf_counter), so the latency
is one clock's difference. Changes the watcher coalesced into a later event are
counted, not timed. `delivered_per_s` is changes made divided by the time from the
first change to the last event received: the rate the whole pipeline kept up with.
A `host.resync` event during a run is an overrun (the kernel dropped notifications and
vnetd re-read its state): that rate was not sustained. Each row also has the CPU per
change of the daemon, the broker and the subscriber.

`checks` adds the broker's own ceiling at the same message size (a trivial publisher,
same exchange, properties and confirms) and the proof that the subscriber is not the
bottleneck (two subscriber processes sharing the queue do not deliver more).

The changer runs in its own process (a thread here would share the GIL with the
subscriber and, above a few thousand changes per second, measure itself).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiormq

from bench.lab import run
from bench.lean_amqp import LeanSubscriber
from bench.ways import cpu_seconds
from tests.support.daemon import DaemonProcess

TAPS = 200
MTU_LOW, MTU_HIGH = 1000, 9000

CHANGER = r"""
import errno, json, socket, struct, sys, time
names, rate, seconds = sys.argv[1].split(","), float(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
s.bind((0, 0))
index = [socket.if_nametoindex(n) for n in names]
HDR, IFI, MTU = struct.Struct("=IHHII"), struct.Struct("=BxHiII"), struct.Struct("=HHI")
BATCH = 256  # most changes in one datagram
mtu = 1000
sent = []
start = time.perf_counter()
i = 0
while True:
    now = time.perf_counter()
    if now - start >= seconds:
        break
    due = int((now - start) * rate) + 1 if rate > 0 else i + BATCH
    if due <= i:  # ahead of the schedule: wait for the next change's time
        wait = start + i / rate - now
        if wait > 0.0003:
            time.sleep(wait - 0.0002)
        continue
    parts = []
    first = i
    for _ in range(min(due - i, BATCH)):
        k = i % len(names)
        if k == 0:
            mtu = mtu + 1 if mtu < 9000 else 1000
        # RTM_NEWLINK, NLM_F_REQUEST only: the kernel answers only an error
        parts.append(HDR.pack(40, 16, 0x1, i + 1, 0) + IFI.pack(0, 0, index[k], 0, 0)
                     + MTU.pack(8, 4, mtu))
        sent.append((k, mtu, 0.0))
        i += 1
    t0 = time.perf_counter()
    s.send(b"".join(parts))  # the kernel applies them in order inside this call
    for j in range(first, i):
        sent[j] = (sent[j][0], sent[j][1], t0)
# One acknowledged request at the end: every error before it is queued by then.
s.send(HDR.pack(40, 16, 0x5, 0, 0) + IFI.pack(0, 0, index[0], 0, 0) + MTU.pack(8, 4, mtu))
errors = 0
while True:
    ack = s.recv(65536)
    seq, code = struct.unpack_from("=I", ack, 8)[0], struct.unpack_from("=i", ack, 16)[0]
    if seq == 0:
        break
    errors += 1
if errors:
    raise SystemExit(f"{errors} changes failed")
json.dump(sent, sys.stdout)
"""


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
        "messages": len(got),
        "lag_ms": round((last_at - sent[-1][2]) * 1000, 1) if count else None,
        "p50_ms": _pct(lat, 0.5),
        "p99_ms": _pct(lat, 0.99),
        "max_ms": round(lat[-1], 3) if lat else None,
        "resyncs": resyncs,
    }


async def measure_one(daemon: DaemonProcess, amqp_url: str, rate: float | None,
                      seconds: float, sub: LeanSubscriber,
                      broker: int | None = None) -> dict[str, Any]:
    names = [f"ev{i:03d}" for i in range(TAPS)]
    n0 = len(sub.received)
    cpu0, sub0 = cpu_seconds(daemon.pid), time.process_time()
    broker0 = cpu_seconds(broker) if broker else 0.0
    sent = await _changes(daemon.netns or "", names, rate, seconds)
    # Stragglers: wait until nothing arrived for 0.5 s (at most 30 s).
    deadline = time.perf_counter() + 30
    seen = -1
    while len(sub.received) != seen and time.perf_counter() < deadline:
        seen = len(sub.received)
        await asyncio.sleep(0.5)
    n = max(len(sent), 1)
    row = _summary(rate, sent, names, sub.received[n0:])
    row["daemon_cpu_ms_per_change"] = round((cpu_seconds(daemon.pid) - cpu0) * 1000 / n, 4)
    if broker:
        row["broker_cpu_ms_per_change"] = round((cpu_seconds(broker) - broker0) * 1000 / n, 4)
    row["subscriber_cpu_ms_per_change"] = round((time.process_time() - sub0) * 1000 / n, 4)
    return row


async def measure(daemon: DaemonProcess, amqp_url: str, rates: list[float | None],
                  seconds: float) -> list[dict[str, Any]]:
    async with LeanSubscriber(amqp_url, daemon.host_id) as sub:
        return [await measure_one(daemon, amqp_url, rate, seconds, sub) for rate in rates]


def make_taps(ns: str) -> None:
    run("ip", "-n", ns, "-batch", "-",
        input="".join(f"tuntap add dev ev{i:03d} mode tap\n" for i in range(TAPS)))


async def broker_ceiling(amqp_url: str, broker_pid: int | None, body_bytes: int,
                         count: int) -> dict[str, Any]:
    """The broker's own ceiling for vnetd's message size: a trivial publisher process
    (bench/lean_amqp.py: prebuilt frames, same exchange, properties and confirms) as
    fast as it goes, to the same lean subscriber. Nothing vnetd does can beat it: vnetd
    in front of the broker can only add CPU to the same two cores."""
    host = f"ceiling-{time.monotonic_ns()}"
    async with LeanSubscriber(amqp_url, host) as sub:
        cpu0, sub0 = (cpu_seconds(broker_pid) if broker_pid else 0.0), time.process_time()
        proc = await asyncio.to_thread(
            run, sys.executable, "-m", "bench.lean_amqp", "publish", amqp_url,
            f"{host}.link.changed", str(body_bytes), str(count), timeout=600)
        pub = json.loads(proc.stdout)
        deadline = time.perf_counter() + 60
        while len(sub.received) < count and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        got = list(sub.received)
        broker_cpu = (cpu_seconds(broker_pid) - cpu0) if broker_pid else None
        sub_cpu = time.process_time() - sub0
    span = (got[-1][0] - pub["t0"]) if got else 0.0
    return {
        "messages": count, "body_bytes": body_bytes, "received": len(got),
        "delivered_per_s": round(len(got) / span, 1) if span > 0 else 0.0,
        "broker_cpu_ms_per_msg": round(broker_cpu * 1000 / count, 4) if broker_cpu else None,
        "publisher_cpu_ms_per_msg": round(pub["cpu_s"] * 1000 / count, 4),
        "subscriber_cpu_ms_per_msg": round(sub_cpu * 1000 / max(len(got), 1), 4),
    }


def broker_pid(workdir: Path) -> int | None:
    """The lab broker's pid (scripts/broker.sh keeps it in <lab>/broker/rabbit.pid)."""
    try:
        return int((workdir / "broker" / "rabbit.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


async def _shared_queue_run(daemon: DaemonProcess, amqp_url: str, rate: float,
                            seconds: float, processes: int) -> dict[str, Any]:
    """The same changes, received by `processes` subscriber processes sharing one queue
    (each gets part of the stream; the union is matched as usual)."""
    names = [f"ev{i:03d}" for i in range(TAPS)]
    queue = f"bench-shared-{time.monotonic_ns()}"
    conn = await aiormq.connect(amqp_url)
    try:
        ch = await conn.channel()
        await ch.queue_declare(queue, auto_delete=True)
        await ch.queue_bind(queue, "vnetd.events", routing_key=f"{daemon.host_id}.#")
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.lean_amqp", "consume", amqp_url, queue, "1.0",
            stdout=asyncio.subprocess.PIPE) for _ in range(processes)]
        for proc in procs:
            assert proc.stdout is not None
            await asyncio.wait_for(proc.stdout.readline(), 30)  # "ready"
        sent = await _changes(daemon.netns or "", names, rate, seconds)
        got: list[tuple[float, bytes]] = []
        for proc in procs:
            out, _ = await asyncio.wait_for(proc.communicate(), 120)
            got += [(at, body.encode()) for at, body in json.loads(out)]
    finally:
        await conn.close()
    got.sort(key=lambda r: r[0])
    return _summary(rate, sent, names, got)


async def checks(daemon: DaemonProcess, amqp_url: str, broker: int | None, seconds: float,
                 sub: LeanSubscriber) -> dict[str, Any]:
    """The broker's ceiling at the events' own message size, and that the subscriber is
    not the bottleneck: at 20,000 changes/s offered, one subscriber in this process
    against two subscriber processes sharing one queue (each half the stream)."""
    sizes = sorted(len(body) for _, body in sub.received[-1000:])
    size = sizes[len(sizes) // 2] if sizes else 500
    one = await measure_one(daemon, amqp_url, 20000.0, seconds, sub, broker)
    two = await _shared_queue_run(daemon, amqp_url, 20000.0, seconds, 2)
    ceiling = await broker_ceiling(amqp_url, broker, size, 60000)
    ratio = (two["delivered_per_s"] / one["delivered_per_s"]) if one["delivered_per_s"] else None
    return {"ceiling": ceiling, "one_subscriber": one, "two_subscribers": two,
            "two_over_one": round(ratio, 3) if ratio else None}
