"""The event stream on a 3-node cluster: a nack after a leader loss stalls no subscriber.

RabbitMQ 3.10 nacks every publish to a quorum queue on a channel whose first
publish to it came while the queue's record named a dead leader, until that
node returns (bench/results/cluster-stall-evidence.txt). A subscriber that must
not miss events uses a durable quorum queue of its own (docs/contract.md); if
the events publisher kept its channel, every event routed to that queue would
be nacked and retried on the same channel while the dead node stays dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from tests.support import netns as ns
from tests.support.cluster import Cluster, frozen, kill_now
from tests.support.daemon import DaemonProcess
from tests.support.env import Lab

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

EXCHANGE = "vnetd.events"


@pytest.fixture
async def daemon(lab: Lab, cluster: Cluster, netns: str) -> AsyncIterator[DaemonProcess]:
    """A daemon connected to node 2 only (it must outlive node 1's death); the
    cluster (conftest.py's, shared by the cluster modules) gets every node back after."""
    host_id = DaemonProcess.new_host_id("evnack")
    d = DaemonProcess(host_id=host_id, amqp_url=cluster.urls[1], netns=netns,
                      workdir=lab.dir / "daemons" / host_id,
                      extra={"amqp": {"urls": [cluster.urls[1]]},
                             # no heartbeat routed to the queue before the leader loss
                             "events": {"heartbeat_seconds": 3600.0}})
    await d.start()
    try:
        yield d
    finally:
        await d.stop()
        for n in cluster.nodes:
            if not await n.ais_up():
                await cluster.arestart(n)


async def test_events_reach_a_quorum_queue_subscriber_while_the_dead_leader_stays_dead(
        cluster: Cluster, daemon: DaemonProcess, netns: str) -> None:
    """Node 1 leads the subscriber's quorum queue; with node 3 frozen (no election
    possible) node 1 is killed and a link appears: the daemon's first publish
    routed to that queue is nacked. Node 3 resumes, a leader is elected, and node
    1 stays dead: the events of that link and of later ones must reach the
    subscriber, in sequence, with no gap unannounced. (Before: every later event
    on the daemon's channel nacked, the stream stuck until node 1 came back.)"""
    queue = f"evnack.{daemon.host_id}"
    received: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    # Declared through node 1: it becomes the queue's leader.
    first = await aio_pika.connect(cluster.urls[0])
    async with first:
        ch = await first.channel()
        ex = await ch.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        q = await ch.declare_queue(queue, durable=True,
                                   arguments={"x-queue-type": "quorum",
                                              "x-quorum-initial-group-size": 3})
        await q.bind(ex, routing_key=f"{daemon.host_id}.#")
    assert cluster.leader(queue) == cluster.nodes[0].node

    async def on_message(message: AbstractIncomingMessage) -> None:
        received.append(json.loads(message.body))
        await message.ack()
        arrived.set()

    def publisher_log() -> str:
        return "\n".join(line for line in daemon.log_text().splitlines()
                         if "events_publish" in line or "events_channel" in line)[-3000:]

    async def wait_subject(subject: str, timeout: float) -> float:
        start = time.monotonic()
        deadline = start + timeout
        while not any(e.get("subject") == subject for e in received):
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [(e["sequence"], e["type"], e.get("subject")) for e in received]
                raise AssertionError(
                    f"no event about {subject} within {timeout}s with node 1 dead; "
                    f"seen {seen[-20:]}; the daemon's publisher said:\n{publisher_log()}")
            arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), left)
        return time.monotonic() - start

    # The subscriber consumes through node 2 (it outlives node 1).
    sub = await aio_pika.connect(cluster.urls[1])
    async with sub:
        sch = await sub.channel()
        await sch.set_qos(prefetch_count=1000)
        sq = await sch.declare_queue(queue, durable=True, passive=True)
        await sq.consume(on_message)
        with frozen(cluster.nodes[2]):
            await kill_now(cluster.nodes[0])
            ns.run_in(netns, "ip", "link", "add", "evk0", "type", "bridge")
            await asyncio.sleep(3)  # the daemon publishes it; no leader to queue it
        # node 3 back: a leader can be elected; node 1 stays dead from here on
        first_in = await wait_subject("evk0", 30)
        later = []
        for i in range(1, 4):
            ns.run_in(netns, "ip", "link", "add", f"evk{i}", "type", "bridge")
            later.append(await wait_subject(f"evk{i}", 15))
        assert not cluster.nodes[0].is_up(), "node 1 came back: the test proves nothing"
        await asyncio.sleep(1.0)  # any duplicates still on their way
        await sch.queue_delete(queue)

    assert daemon.running
    assert "events_publish_nacked" in publisher_log(), \
        "no publish was nacked: the race was not set up"
    epoch = received[-1]["epoch"]
    seqs = [int(e["sequence"]) for e in received if e["epoch"] == epoch]
    announced: set[int] = set()
    for e in received:
        lost = (e.get("data") or {}).get("lost") if e["type"].endswith("host.resync") else None
        if lost:
            announced.update(range(int(lost["first"]), int(lost["last"]) + 1))
    unique = sorted(set(seqs))
    missing = [s for s in range(unique[0], unique[-1] + 1)
               if s not in unique and s not in announced]
    assert missing == [], f"silent gap in the event stream: {missing[:20]}"
    # in order: a re-publish may repeat what was seen, a new sequence is always the newest
    seen: set[int] = set()
    for s in seqs:
        assert s in seen or not seen or s > max(seen), f"sequence {s} after {max(seen)}"
        seen.add(s)
    print(f"\nfirst event after the thaw in {first_in:.1f}s; later links in "
          f"{', '.join(f'{t:.2f}' for t in later)}s; {len(seqs)} events, "
          f"{len(seqs) - len(unique)} duplicates")
