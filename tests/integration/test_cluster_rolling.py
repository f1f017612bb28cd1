"""A rolling restart of a 3-node RabbitMQ cluster under load loses no job and hides no event gap.

The cluster is made by the module (tests/support/cluster.py) in the lab
namespace. One daemon is given the three nodes' URLs; a client (the project's
VnetClient, also on the three URLs) keeps tap.ensure jobs coming at a steady
rate, at most 64 in flight, while each node in turn is stopped (SIGTERM,
graceful), started again, and waited for until it is back in the cluster and
an online member of the host queue (and of the test's event queue). The node
restarted next is the daemon's, while it is one still to be restarted: a stop
moves the daemon and the client off their node to the next URL that answers,
which need not be the next in the list. Then:

- every job has exactly one answer at the client (it resends with the same
  message_id when no reply came; the daemon answers a resent one from its
  dedupe cache), each `ok` and `created` by that job;
- the daemon's namespace holds exactly the TAPs the jobs named, each complete
  (marked `vnetd:v1`, on its bridge), none more;
- the events the daemon published across the restarts, read from a quorum
  queue of the test's own (every node goes away once, so no subscriber
  connection survives; the queue keeps what arrived meanwhile), have no
  silent gap: the sequences of the daemon's epoch are contiguous, or the
  missing range is announced by a host.resync with `lost`.

Figures printed: per restart, the failover time, i.e. the longest time without
any reply from the stop until the node was back (a graceful stop takes about 3 s
here and replies keep coming during most of it, so "the last reply before the
stop to the first after", also printed, is short); the p99 job latency over the
run.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aio_pika
import pytest

from tests.support import netns as ns
from tests.support.cluster import (
    Cluster,
    PacedLoad,
    evidence,
    p99,
    queue_online,
    silent_gaps,
    wait_member_online,
)
from tests.support.daemon import DaemonFactory
from vnetd.amqp import topology
from vnetd.client import VnetClient

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

RATE = 30.0  # jobs/s: about 1,700 to 2,300 jobs over the three restarts (about 20 s each) here
BRIDGES = 8  # at most 1,023 ports on one bridge; a slow run makes about 4,000 jobs
WARMUP = 100  # replies before the first stop, and between two restarts


async def _declare_event_probe(url: str, name: str, host_id: str) -> None:
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        await q.bind("vnetd.events", routing_key=f"{host_id}.#")


async def _drain_event_probe(url: str, name: str) -> list[dict[str, Any]]:
    events = []
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        q = await ch.get_queue(name)
        while (m := await q.get(fail=False, no_ack=True)) is not None:
            events.append(json.loads(m.body))
        await q.delete(if_unused=False, if_empty=False)
    return events


async def test_rolling_restart_of_all_three_nodes_under_load(
        cluster: Cluster, cluster_daemon: DaemonFactory, netns: str) -> None:
    d = await cluster_daemon(netns)
    queue = topology.host_queue_name(d.host_id)
    probe = f"probe.{d.host_id}"
    await _declare_event_probe(cluster.urls[0], probe, d.host_id)
    queues = [queue, probe]
    members, online = await asyncio.to_thread(queue_online, cluster, queue)
    assert sorted(members) == sorted(online) == sorted(n.node for n in cluster.nodes), \
        "the host queue is not replicated on every node"

    rounds: list[dict[str, Any]] = []
    async with VnetClient(cluster.urls) as client:
        for b in range(BRIDGES):
            assert (await client.call(d.host_id, "bridge.ensure", {"name": f"br{b}"},
                                      timeout=30)).ok
        snap = await client.call(d.host_id, "host.snapshot", timeout=30)
        epoch = snap.result["events"]["epoch"]
        load = PacedLoad(client, d.host_id, [], rate=RATE, bridges=BRIDGES)
        done = asyncio.Event()
        runner = asyncio.create_task(load.run_paced(done, "r"))
        try:
            todo = list(cluster.nodes)
            for i in range(len(cluster.nodes)):
                while len(load.replies) < WARMUP * (i + 1) and not runner.done():
                    await asyncio.sleep(0.05)
                assert not runner.done(), "the load stopped before the restarts"
                health = await client.call(d.host_id, "host.health", timeout=30,
                                           resend_every=2)
                # The daemon's node first, whenever it is still to be restarted: a
                # reconnect may land on any live node (the next answering URL).
                on = cluster.node_at(health.result["broker_node"])
                node = on if on in todo else todo[0]
                todo.remove(node)
                leader = await asyncio.to_thread(cluster.leader, queue)
                stopped_at = time.monotonic()
                await node.astop()
                up_at = time.monotonic()
                await cluster.arestart(node)
                await asyncio.to_thread(wait_member_online, cluster, node, queues)
                back_at = time.monotonic()
                # the first reply after the stop, however long it takes
                while not any(t > stopped_at for t in load.answered_at.values()):
                    assert not runner.done()
                    await asyncio.sleep(0.05)
                rounds.append({
                    "node": node.node,
                    "daemon_was_on_it": cluster.node_at(health.result["broker_node"]) is node,
                    "leader_was_on_it": leader == node.node,
                    "failover_s": round(load.max_gap(stopped_at, back_at), 3),
                    "last_to_first_after_stop_s": round(load.failover(stopped_at), 3),
                    "down_s": round(up_at - stopped_at, 1),
                    "until_back_s": round(back_at - stopped_at, 1),
                })
        finally:
            done.set()
            try:
                await asyncio.wait_for(runner, 240)
            except TimeoutError:
                pytest.fail(f"jobs still unanswered 240 s after the last restart:\n"
                            f"{evidence(cluster, queue)}\n{d.log_tail(40)}")
        health_after = await client.call(d.host_id, "host.health", timeout=30, resend_every=2)
        assert health_after.ok
    events = await _drain_event_probe(cluster.urls[0], probe)

    # exactly one answer per job at the client, each ok and created by its own job
    assert load.unanswered == {}, (
        f"{len(load.unanswered)} jobs never answered:\n{evidence(cluster, queue)}")
    assert load.names and len(load.replies) == len(load.names)
    assert set(load.answers.values()) == {1}
    bad = {n: r for n, r in load.replies.items() if not r.ok}
    assert bad == {}
    not_created = [n for n, r in load.replies.items() if r.result.get("created") is not True]
    assert not_created == [], f"TAPs reported as made by an earlier job: done twice: {not_created}"
    # the kernel: every TAP once, complete; no other
    links = await asyncio.to_thread(ns.links, netns)
    made = sorted(n for n in links if n.startswith("r") and n[1:].isdigit())
    assert made == sorted(load.names)
    half = [n for n in made if links[n].get("master") != load.bridge_of(n)
            or links[n].get("ifalias") != "vnetd:v1"]
    assert half == [], f"half-done TAPs: {half[:10]}"
    assert d.running
    # the events
    missing, seen, dup_events = silent_gaps(events, epoch)
    assert missing == [], f"silent gap in the event stream: {missing[:20]}"
    # Every node restarted once; the first restart and at least one more moved the
    # daemon (the last node left may not be the one it landed on).
    assert sorted(r["node"] for r in rounds) == sorted(n.node for n in cluster.nodes)
    assert rounds[0]["daemon_was_on_it"] and sum(r["daemon_was_on_it"] for r in rounds) >= 2, \
        f"the restarts should have moved the daemon off its node: {rounds}"

    figures = {"jobs": len(load.names),
               "p99_s": round(p99(list(load.latency.values())), 3),
               "median_s": round(sorted(load.latency.values())[len(load.latency) // 2], 3),
               "events": seen, "duplicate_events": dup_events,
               "duplicate_deliveries": d.log_text().count('"duplicate": true'),
               "broker_node_after": health_after.result["broker_node"]}
    print(f"\nrolling restart: {figures}")
    for r in rounds:
        print(f"  restart {r}")
