"""The event publisher alone: how fast vnetd's EventBus + EventPublisher move events
from `emit` to a subscriber, without the kernel or the watcher in front.

`python -m bench.publisher URL N` (run with PYTHONPATH pointing at the vnetd tree to
measure) emits N `link.changed`-sized events in bursts of 100 per loop iteration (as
the watcher does after a read), and prints {"emitted_per_s", "delivered_per_s",
"cpu_ms_per_event", "p50_ms", "p99_ms"}: delivered is N over the time from the first
emit to the last event a subscriber (bench/lean_amqp.py's, in this process, so its
CPU, about 0.01 ms per message, is counted too) received; latency is emit to receipt.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

import aio_pika

from bench.lean_amqp import LeanSubscriber

DATA = {"name": "tap00042", "index": 42, "kind": "tap", "state": "up", "oper_state": "up",
        "carrier": True, "mtu": 1500, "mac": "52:54:00:12:34:56", "master": "br0",
        "alias": "vnetd:v1", "owned": True, "changes": ["mtu"], "previous": {"mtu": 1400}}


async def main(url: str, n: int) -> dict[str, Any]:
    import vnetd
    from vnetd.events.bus import EventBus
    from vnetd.events.publisher import EventPublisher

    host = f"pub-{uuid.uuid4().hex[:6]}"
    conn = await aio_pika.connect_robust(url)
    bus = EventBus(host, capacity=n + 10)
    pub = EventPublisher(bus, conn, "vnetd.events")
    await pub.start()
    sub = await LeanSubscriber(url, host).__aenter__()
    sent: dict[int, float] = {}

    async def all_received() -> None:
        while len(sub.received) < n:
            await asyncio.sleep(0.005)

    t_cpu = time.process_time()
    t0 = time.perf_counter()
    for i in range(0, n, 100):
        for _ in range(min(100, n - i)):
            bus.emit("link.changed", "tap00042", DATA)
            sent[bus.sequence] = time.perf_counter()
        await asyncio.sleep(0)
    t_emit = time.perf_counter() - t0
    await asyncio.wait_for(all_received(), 300)
    t_all = sub.received[n - 1][0] - t0
    cpu = time.process_time() - t_cpu
    await pub.stop()
    await sub.__aexit__(None, None, None)
    await conn.close()
    lat = sorted((at - sent[json.loads(body)["sequence"]]) * 1000
                 for at, body in sub.received[:n])
    return {"events": n, "emitted_per_s": round(n / t_emit), "delivered_per_s": round(n / t_all),
            "cpu_ms_per_event": round(cpu * 1000 / n, 4),
            "p50_ms": round(lat[len(lat) // 2], 1), "p99_ms": round(lat[int(len(lat) * 0.99)], 1),
            "pid": os.getpid(),
            "vnetd_from": os.path.dirname(os.path.dirname(os.path.realpath(vnetd.__file__)))}


def _cli() -> None:
    profile = os.environ.get("BENCH_PUBLISHER_PROFILE")  # a path prefix: cProfile it
    if not profile:
        print(json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2])))))
        return
    import cProfile

    with cProfile.Profile() as prof:
        out = asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    prof.dump_stats(f"{profile}.{os.getpid()}")
    print(json.dumps(out))


if __name__ == "__main__":
    _cli()
