"""Event latency (kernel change -> subscriber receipt) and throughput before the first
netlink overrun. Prints the figures; fails if an event is missing or out of order.

Changes are made by a thread that entered the daemon's namespace (setns moves only
that thread) with its own rtnetlink socket, so the time of each change and the time
of receipt are read from one clock (time.perf_counter) in one process.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime

import pytest

from tests.integration.events_subscriber import Received, Subscriber
from tests.support import netns as netns_mod
from tests.support.daemon import DaemonProcess
from tests.support.env import Lab

pytestmark = [pytest.mark.integration, pytest.mark.slow]


DRIVER = r"""
import json, socket, struct, sys, time
names, count, rate = sys.argv[1].split(","), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
s.bind((0, 0))
index = {n: socket.if_nametoindex(n) for n in names}
mtu = {n: 1500 for n in names}
sent = []
start = time.perf_counter()
for i in range(count):
    if rate > 0:
        due = start + i / rate
        while (now := time.perf_counter()) < due:
            if due - now > 0.0003:
                time.sleep(due - now - 0.0002)
    name = names[i % len(names)]
    mtu[name] = 1400 if mtu[name] != 1400 else 1500
    body = struct.pack("=BxHiII", 0, 0, index[name], 0, 0) + struct.pack("=HHI", 8, 4, mtu[name])
    msg = struct.pack("=IHHII", 16 + len(body), 16, 0x5, i + 1, 0) + body
    t0 = time.perf_counter()
    s.send(msg)
    ack = s.recv(4096)
    if struct.unpack_from("=i", ack, 16)[0] != 0:
        raise SystemExit(f"netlink error {ack!r}")
    sent.append((name, mtu[name], t0))
json.dump(sent, sys.stdout)
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


PUBLISHER = r"""
import asyncio, json, sys, time
import aio_pika
async def main():
    url, key, count, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    conn = await aio_pika.connect(url)
    ch = await conn.channel(publisher_confirms=True)
    ex = await ch.declare_exchange("vnetd.events", aio_pika.ExchangeType.TOPIC, durable=True)
    start = time.perf_counter()
    tasks = []
    for i in range(count):
        due = start + i / rate
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        body = json.dumps({"sequence": i + 1, "t0": time.perf_counter(),
                           "type": "io.vnetd.bench", "data": {}}).encode()
        tasks.append(asyncio.ensure_future(ex.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            key, mandatory=False)))
    await asyncio.gather(*tasks)
    await conn.close()
asyncio.run(main())
"""


async def baseline_latency(url: str, count: int, rate: float) -> list[float]:
    """The floor: a trivial publisher process (no vnetd) through the same broker to a
    subscriber like ours, at the same rate."""
    host = f"baseline-{time.monotonic_ns()}"
    async with Subscriber(url, host) as sub:
        await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", PUBLISHER, url, f"{host}.bench", str(count),
                             str(rate)], check=True, timeout=120)
        await sub.wait_for(lambda r: r.seq == count, timeout=30)
        return [(r.at - r.event["t0"]) * 1000 for r in sub.received]


async def run_changes(ns: str, names: list[str], count: int,
                      rate: float | None) -> tuple[list[tuple[str, int, float]], float]:
    """MTU changes made by a separate process inside `ns` (raw rtnetlink, acked one by
    one); its time.perf_counter is CLOCK_MONOTONIC, the same clock as ours."""
    t0 = time.perf_counter()
    proc = await asyncio.to_thread(
        netns_mod.run_in, ns, sys.executable, "-c", DRIVER, ",".join(names), str(count),
        str(rate or 0), timeout=600)
    took = time.perf_counter() - t0
    sent = [(n, m, t) for n, m, t in json.loads(proc.stdout)]
    return sent, sent[-1][2] - sent[0][2] if len(sent) > 1 else took


def match_latencies(sent: list[tuple[str, int, float]], got: list[Received],
                    names: list[str]) -> list[float]:
    """For each change, ms until the first event for (name, mtu) received after it.

    A change the watcher folded into a later event (read together with the next
    change of the same TAP) has no event of its own: it is not timed, but a later
    event for that TAP must exist."""
    latencies: list[float] = []
    pos = {n: 0 for n in names}
    by_name: dict[str, list[Received]] = {n: [] for n in names}
    for r in got:
        by_name[r.event["subject"]].append(r)
    for name, mtu, t0 in sent:
        evs = by_name[name]
        i = pos[name]
        while i < len(evs) and not (evs[i].data["mtu"] == mtu and evs[i].at >= t0):
            i += 1
        if i == len(evs):
            assert any(e.at >= t0 for e in evs), f"no event for {name} after mtu {mtu}"
            continue  # folded into a later event
        latencies.append((evs[i].at - t0) * 1000)
        pos[name] = i + 1
    return latencies


ROUNDS = 3


@pytest.mark.timeout(900)
async def test_latency_at_1000_changes_per_second(start_daemon, lab: Lab, netns: str,
                                                  amqp_url: str) -> None:
    """ROUNDS rounds of 1,000 changes at 1,000/s, each followed by the baseline (a bare
    aio-pika publisher process -> the same subscriber, 1,000 messages at 1,000/s): the
    machine is shared, so compare within a round and take medians over rounds."""
    host = DaemonProcess.new_host_id(lab.suffix)
    names = [f"lt{i}" for i in range(10)]
    netns_mod._run(["ip", "-n", netns, "-batch", "-"],
                   input="".join(f"tuntap add dev {n} mode tap\n" for n in names))
    rows = []
    async with Subscriber(amqp_url, host) as sub:
        await start_daemon(netns=netns, host_id=host)
        await sub.wait_type("host.started")
        await run_changes(netns, names, 200, 1000.0)  # warm-up
        await sub.quiet(0.5)
        for _ in range(ROUNDS):
            n0 = len(sub.received)
            sent, took = await run_changes(netns, names, 1000, 1000.0)
            await sub.wait_for(lambda r, last=sent[-1]: r.type == "link.changed" and
                               r.event.get("subject") == last[0] and
                               r.data["mtu"] == last[1] and r.at > last[2],
                               timeout=60, start=n0)
            await sub.quiet(0.3)
            got = [r for r in sub.received[n0:] if r.type == "link.changed"]
            # One event per change, except changes read together with the next one of
            # the same TAP, which are folded into it. How many fold depends on how
            # evenly the driver and the daemon get the CPU (on a loaded machine the
            # driver sends in bursts and the daemon reads late), so that is printed, not
            # asserted; what must hold: no invented event, and each TAP's last state.
            assert len(names) <= len(got) <= len(sent)
            last_sent = {name: mtu for name, mtu, _ in sent}
            assert {r.event["subject"]: r.data["mtu"] for r in got} == last_sent
            ms = match_latencies(sent, got, names)
            offset = time.time() - time.perf_counter()
            wire = [(r.at - (datetime.fromisoformat(r.event["time"]).timestamp() - offset))
                    * 1000 for r in got]
            base = await baseline_latency(amqp_url, 1000, 1000.0)
            row = (len(sent) / took, statistics.median(ms), pct(ms, 99), statistics.median(wire),
                   pct(wire, 99), statistics.median(base), pct(base, 99), len(got) / len(sent))
            rows.append(row)
            fmt = ("\nround: {:.0f} changes/s; kernel->receipt p50 {:.2f} p99 {:.2f} ms; "
                   "emit->receipt p50 {:.2f} p99 {:.2f} ms; baseline p50 {:.2f} p99 {:.2f} ms; "
                   "events per change {:.3f}")
            print(fmt.format(*row))
        seqs = [r.seq for r in sub.received]
        assert seqs == list(range(1, len(seqs) + 1))
        assert not [r for r in sub.received if r.type == "host.resync"]
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    fmt = ("median of {} rounds: kernel->receipt p50 {:.2f} ms, p99 {:.2f} ms; emit->receipt "
           "p50 {:.2f}, p99 {:.2f} ms; baseline p50 {:.2f} ms, p99 {:.2f} ms; events per "
           "change {:.3f}")
    print(fmt.format(ROUNDS, *med[1:]))


@pytest.mark.timeout(900)
async def test_throughput_before_first_overrun(start_daemon, lab: Lab, netns: str,
                                               amqp_url: str) -> None:
    """Default receive buffer: raise the change rate until the watcher overruns."""
    host = DaemonProcess.new_host_id(lab.suffix)
    names = [f"th{i}" for i in range(20)]
    netns_mod._run(["ip", "-n", netns, "-batch", "-"],
                   input="".join(f"tuntap add dev {n} mode tap\n" for n in names))
    async with Subscriber(amqp_url, host) as sub:
        await start_daemon(netns=netns, host_id=host)
        await sub.wait_type("host.started")
        best = 0.0
        for rate in (1000.0, 2000.0, 4000.0, 8000.0, 16000.0, None):
            n0 = len(sub.received)
            count = int(min(rate or 20000, 20000) * 3)
            sent, took = await run_changes(netns, names, count, rate)
            t_end = time.perf_counter()
            await sub.quiet(1.0, timeout=120)
            new = sub.received[n0:]
            overrun = any(r.type == "host.resync" and r.data["reason"] == "netlink_overrun"
                          for r in new)
            changed = [r for r in new if r.type == "link.changed"]
            last = max((r.at for r in changed), default=t_end)
            span = last - sent[0][2]
            # Changes read together are folded into one event (one per change of
            # state): what must hold is that every TAP ends at the MTU it was last
            # given, and that no event is invented.
            delivered = len(sent) / span
            lag = (last - t_end) * 1000
            print(f"\noffered {len(sent) / took:.0f} changes/s for {took:.1f}s: "
                  f"{len(changed)} link.changed delivered at {delivered:.0f}/s, "
                  f"last {lag:.0f} ms after the last change, overrun={overrun}")
            if overrun:
                break
            final_sent = {name: mtu for name, mtu, _ in sent}
            final_seen = {r.event["subject"]: r.event["data"]["mtu"] for r in changed}
            assert final_seen == final_sent
            assert 0 < len(changed) <= len(sent)
            best = max(best, delivered)
        print(f"sustained changes/s with no overrun, every TAP's final state delivered: "
              f"{best:.0f}")
        assert best >= 1000
