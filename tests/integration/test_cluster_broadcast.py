"""Twenty daemons on a 3-node RabbitMQ cluster: a broadcast reaches all, also while a node dies.

The cluster is made by the module (tests/support/cluster.py) in the lab
namespace. Twenty daemons, started at once, each with its own host id and its
own network namespace for its netlink work, are given the three URLs, each
list rotated so that the fleet spreads over the nodes (daemon i connects to
node i mod 3 first; its host queue, a quorum queue on all three nodes, gets
its leader there). A client (VnetClient, connected to node 1) sends jobs to
`hosts.all` (docs/contract.md) and waits until every one of the twenty hosts
has answered; it resends a job (same message_id, to `host.<id>`) only to the
hosts that have not answered after a while.

- Without a failure, every host answers the broadcast itself: no resend.
- During a broadcast node 1 is killed (SIGKILL) as soon as the first reply is
  in: the client's node, the node about a third of the daemons are connected
  to, and the leader of their host queues. Every host still answers
  (possibly only after reconnecting; the client resends), ok and `created`
  by that job, and no daemon applies it twice: each daemon's log shows at
  most one run of the job's message_id that was not answered from the
  dedupe cache, and its namespace holds the TAP once, complete.
- After the kill every daemon is on a surviving node and a broadcast again
  reaches all twenty without a resend (their consumers are back).

Figures printed: broadcast completion time (the first send to the last
host's first reply) without the kill (median of several) and with it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import netns as ns
from tests.support.cluster import (
    BroadcastClient,
    BroadcastResult,
    Cluster,
    evidence,
    kill_now,
    leaders,
)
from tests.support.daemon import DaemonProcess
from tests.support.env import Lab
from tests.support.netns import NetnsFactory
from vnetd.amqp import topology
from vnetd.client import CallTimeout

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(480)]

DAEMONS = 20
QUIET_ROUNDS = 5  # broadcasts without a failure, for the median


@dataclass
class Member:
    daemon: DaemonProcess
    netns: str
    first_node: int


@pytest.fixture
async def fleet(lab: Lab, cluster: Cluster, netns_factory: NetnsFactory
                ) -> AsyncIterator[list[Member]]:
    members = []
    for i in range(DAEMONS):
        first = i % len(cluster.urls)
        urls = cluster.urls[first:] + cluster.urls[:first]
        host_id = DaemonProcess.new_host_id(lab.suffix)
        netns = netns_factory()
        d = DaemonProcess(host_id=host_id, amqp_url=urls[0], netns=netns,
                          workdir=lab.dir / "daemons" / host_id, ready_timeout=90.0,
                          extra={"amqp": {"urls": urls}})
        members.append(Member(d, netns, first))
    try:
        t0 = time.monotonic()
        await asyncio.gather(*(m.daemon.start() for m in members))
        print(f"\n{DAEMONS} daemons started in {time.monotonic() - t0:.1f}s")
        yield members
    finally:
        # (the killed node is not started again: the module's one test is over and
        # its cluster is removed next; a second test here would need it back)
        await asyncio.gather(*(m.daemon.stop() for m in members), return_exceptions=True)


def _runs(d: DaemonProcess, message_id: str) -> tuple[int, int]:
    """(runs of the job, answers from the dedupe cache) in the daemon's log."""
    ran = cached = 0
    for line in d.log_text().splitlines():
        if message_id not in line or not line.startswith("{"):
            continue
        rec = json.loads(line)
        if rec.get("event") == "job" and rec.get("message_id") == message_id:
            if rec.get("duplicate"):
                cached += 1
            else:
                ran += 1
    return ran, cached


def _check_tap_everywhere(fleet: list[Member], result: BroadcastResult, name: str,
                          message_id: str) -> dict[str, int]:
    """Every host answered ok, made the TAP with that job, once, complete."""
    by_host = {m.daemon.host_id: m for m in fleet}
    assert set(result.first) == set(by_host)
    bad = {h: r for h, r in result.first.items() if not r.ok}
    assert bad == {}, bad
    not_created = sorted(h for h, r in result.first.items() if r.result.get("created") is not True)
    assert not_created == [], f"{name} reported as made by an earlier run on {not_created}"
    twice = {}
    cached_total = 0
    for h, m in by_host.items():
        ran, cached = _runs(m.daemon, message_id)
        cached_total += cached
        if ran > 1:
            twice[h] = ran
        links = ns.links(m.netns)
        assert name in links, f"{name} missing on {h}"
        assert links[name].get("master") == "br0" and links[name].get("ifalias") == "vnetd:v1", \
            f"{name} half-done on {h}: {links[name]}"
    assert twice == {}, f"the job ran more than once on {twice}"
    return {"answered_from_cache": cached_total}


async def _broadcast(client: BroadcastClient, fleet: list[Member], cluster: Cluster, op: str,
                     args: dict[str, Any], **kw: Any) -> BroadcastResult:
    hosts = {m.daemon.host_id for m in fleet}
    try:
        return await client.broadcast_all(op, args, hosts, **kw)
    except CallTimeout as exc:
        pytest.fail(f"{exc}\n" + "\n".join(
            evidence(cluster, topology.host_queue_name(m.daemon.host_id))
            + f"\n--- {m.daemon.host_id} log\n{m.daemon.log_tail(30)}"
            for m in fleet if m.daemon.host_id in str(exc)))


async def test_broadcast_reaches_twenty_daemons_also_while_a_node_is_killed(
        cluster: Cluster, fleet: list[Member]) -> None:
    victim = cluster.nodes[0]
    async with BroadcastClient(cluster.urls) as client:
        assert client.node == f"127.0.0.1:{victim.port}"
        # which node each daemon is on (VnetClient.broadcast: what arrives in 3 s)
        health = await client.broadcast("host.health", {}, timeout=3.0)
        on = {r.host_id: r.result.get("broker_node") for r in health}
        assert len(on) == DAEMONS, f"only {len(on)} of {DAEMONS} hosts answered host.health"
        on_victim = sorted(h for h, node in on.items() if node == f"127.0.0.1:{victim.port}")
        assert len(on_victim) >= DAEMONS // 3, f"the fleet is not spread: {on}"

        bridges = await _broadcast(client, fleet, cluster, "bridge.ensure", {"name": "br0"},
                                   resend_every=20.0)
        assert bridges.resends == 0 and all(r.ok for r in bridges.first.values())

        quiet = []
        for i in range(QUIET_ROUNDS):
            mid = f"quiet-{i}-{time.time_ns()}"
            res = await _broadcast(client, fleet, cluster, "tap.ensure",
                                   {"name": f"b{i}", "bridge": "br0"}, message_id=mid,
                                   resend_every=20.0)
            assert res.resends == 0, "a broadcast without a failure needed resends"
            assert set(res.copies.values()) == {1}
            _check_tap_everywhere(fleet, res, f"b{i}", mid)
            quiet.append(res.elapsed)

        # the kill, as soon as the first host has answered
        led = await asyncio.to_thread(leaders, cluster)
        led_by_victim = sorted(m.daemon.host_id for m in fleet
                               if led.get(topology.host_queue_name(m.daemon.host_id))
                               == victim.node)
        mid = f"kill-{time.time_ns()}"
        name = "bk"
        first_in = asyncio.Event()
        task = asyncio.create_task(_broadcast(
            client, fleet, cluster, "tap.ensure", {"name": name, "bridge": "br0"},
            message_id=mid, timeout=120.0, resend_every=3.0, first_reply=first_in))
        await asyncio.wait_for(first_in.wait(), 30)
        t_first = time.monotonic()
        t_kill = await kill_now(victim)
        killed_after = t_kill - t_first
        res = await task
        answered_before = sum(1 for t in res.at.values() if res.started + t <= t_kill)
        assert answered_before < DAEMONS, "the kill came after the broadcast was over"
        kill_figures = _check_tap_everywhere(fleet, res, name, mid)

        # afterwards: every daemon on a surviving node, and all reached again at once
        health = await client.broadcast("host.health", {}, timeout=3.0)
        after = {r.host_id: r.result.get("broker_node") for r in health}
        assert len(after) == DAEMONS
        assert f"127.0.0.1:{victim.port}" not in set(after.values()), after
        mid = f"after-{time.time_ns()}"
        again = await _broadcast(client, fleet, cluster, "tap.ensure",
                                 {"name": "ba", "bridge": "br0"}, message_id=mid,
                                 resend_every=20.0)
        assert again.resends == 0, "after the failover a broadcast no longer reaches every host"
        _check_tap_everywhere(fleet, again, "ba", mid)
    assert all(m.daemon.running for m in fleet)

    figures = {
        "daemons": DAEMONS, "on_killed_node": len(on_victim),
        "leaders_on_killed_node": len(led_by_victim),
        "on_it_and_led_by_it": len(set(on_victim) & set(led_by_victim)),
        "quiet_median_s": round(statistics.median(quiet), 3),
        "quiet_max_s": round(max(quiet), 3),
        "with_kill_s": round(res.elapsed, 3),
        "answered_before_kill": answered_before,
        "kill_after_first_reply_s": round(killed_after, 3),
        "resend_rounds": res.resends,
        "copies": sum(res.copies.values()) - DAEMONS, **kill_figures,
        "after_s": round(again.elapsed, 3),
    }
    print(f"\nbroadcast: {figures}")
