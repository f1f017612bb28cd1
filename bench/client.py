"""The benchmark's load client: a lean aiormq RPC client, the same for every way.

One connection, one channel, an exclusive reply queue consumed without acks, and
publishes written without waiting for a socket drain or a confirm (the client's own
bookkeeping must not be what limits a figure: aio-pika's publish path, a task and a
drain per message, capped the no-op responder near 1,300 round trips/s here while
the transport did ~2,000).

`python -m bench.client URL HOST_ID OP N CONCURRENCY` runs N jobs from a process of
its own: once connected it prints `ready`, reads the time to start at
(time.perf_counter) from stdin, and prints `{"start": ..., "end": ..., "latencies_ms":
[...], "errors": ..., "cpu_s": ...}` (cpu_s: its CPU time from start to end): the runner
starts two of them to check that a second client process does not raise the figure
(then one client is not the bottleneck).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
import uuid
from typing import Any, cast

import aiormq
import aiormq.abc

EXCHANGE = "vnetd.commands"


class LeanRpc:
    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: aiormq.abc.AbstractConnection | None = None
        self._ch: aiormq.Channel | None = None
        self._reply_to = ""
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:12]

    async def __aenter__(self) -> LeanRpc:
        self._conn = await aiormq.connect(self.url)
        self._ch = cast(aiormq.Channel, await self._conn.channel(publisher_confirms=False))
        q = await self._ch.queue_declare("", exclusive=True, auto_delete=True)
        assert q.queue is not None
        self._reply_to = q.queue
        await self._ch.basic_consume(q.queue, self._on_reply, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def _on_reply(self, msg: aiormq.abc.DeliveredMessage) -> None:
        fut = self._pending.pop(msg.header.properties.correlation_id or "", None)
        if fut is not None and not fut.done():
            fut.set_result(json.loads(msg.body))

    async def call(self, host_id: str, op: str, args: dict[str, Any],
                   timeout: float = 10.0) -> dict[str, Any]:
        assert self._ch is not None, "use `async with LeanRpc(url)`"
        cid = f"{self._prefix}-{next(self._ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            await self._ch.basic_publish(
                json.dumps({"op": op, "args": args}).encode(), exchange=EXCHANGE,
                routing_key=f"host.{host_id}",
                properties=aiormq.spec.Basic.Properties(
                    content_type="application/json", correlation_id=cid, message_id=cid,
                    reply_to=self._reply_to),
                wait=False)
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(cid, None)


async def _run(url: str, host_id: str, op: str, n: int, concurrency: int) -> dict[str, Any]:
    from bench.ways import bridge_of, tap_names

    names = iter(enumerate(tap_names(f"c{uuid.uuid4().hex[:3]}", n)))
    latencies: list[float] = []
    errors = 0
    async with LeanRpc(url) as rpc:
        async def worker() -> None:
            nonlocal errors
            for i, name in names:
                t0 = time.perf_counter()
                reply = await rpc.call(host_id, op, {"name": name, "bridge": bridge_of(i)},
                                       timeout=60)
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += reply.get("ok") is not True

        # Start together with the other client processes: at the time the runner
        # sends once all are connected, on the machine-wide monotonic clock
        # (time.perf_counter is CLOCK_MONOTONIC).
        print("ready", flush=True)
        start_at = float(await asyncio.to_thread(sys.stdin.readline))
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        t1 = time.perf_counter()
        cpu = time.process_time() - cpu0
    return {"start": t0, "end": t1, "latencies_ms": latencies, "errors": errors, "cpu_s": cpu}


if __name__ == "__main__":
    url_, host_, op_, n_, c_ = sys.argv[1:6]
    json.dump(asyncio.run(_run(url_, host_, op_, int(n_), int(c_))), sys.stdout)
