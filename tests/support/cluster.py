"""A 3-node RabbitMQ cluster in the lab namespace, made and removed by the tests.

Each node is a private broker of scripts/broker.sh (own node name, AMQP and
distribution ports, state directory) whose state directories share one Erlang
cookie; nodes 2 and 3 then `stop_app`, `join_cluster` node 1 and `start_app`.
About 10 to 20 s here. The lab's own broker keeps running beside it (the nodes
share the namespace's epmd, which broker.sh stops with the last node).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika

from tests.support.broker import LabBroker
from vnetd.client import CallTimeout, Reply, VnetClient

BASE_PORT = 5681
IN_FLIGHT = 64


@dataclass
class Cluster:
    nodes: list[LabBroker]
    base: Path

    @property
    def urls(self) -> list[str]:
        return [f"amqp://guest:guest@127.0.0.1:{n.port}/" for n in self.nodes]

    def node_at(self, address: str) -> LabBroker:
        """The node listening at `host:port` (what host.health's broker_node says)."""
        port = int(address.rsplit(":", 1)[1])
        return next(n for n in self.nodes if n.port == port)

    def by_name(self, name: str) -> LabBroker:
        return next(n for n in self.nodes if n.node == name)

    def alive(self) -> list[LabBroker]:
        return [n for n in self.nodes if n.is_up()]

    def ctl(self, *args: str) -> str:
        """rabbitmqctl on the first live node."""
        for n in self.nodes:
            if n.is_up():
                return n.ctl(*args)
        raise RuntimeError("no cluster node is up")

    def leader(self, queue: str) -> str:
        """The node name of a quorum queue's leader."""
        out = self.ctl("list_queues", "-q", "--no-table-headers", "name", "leader")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return parts[1]
        raise LookupError(f"queue {queue} not found in:\n{out}")

    def members(self, queue: str) -> list[str]:
        out = self.ctl("list_queues", "-q", "--no-table-headers", "name", "members")
        for line in out.splitlines():
            if line.split(None, 1)[0:1] == [queue]:
                return re.findall(r"[\w.\-]+@[\w.\-]+", line.split(None, 1)[1])
        raise LookupError(queue)

    def running_nodes(self) -> list[str]:
        out = self.ctl("cluster_status", "--formatter", "json")
        return list(json.loads(out)["running_nodes"])

    async def arestart(self, node: LabBroker) -> None:
        await asyncio.to_thread(node.start, 90.0)
        await asyncio.to_thread(self.wait_joined, node)

    def wait_joined(self, node: LabBroker, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while node.node not in self.running_nodes():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.node} did not rejoin the cluster")
            time.sleep(0.3)

    def stop(self) -> None:
        for n in self.nodes:
            try:
                n.stop()
            except Exception:
                n.kill()


def start_cluster(netns: str, lab_dir: Path, suffix: str, size: int = 3) -> Cluster:
    base = lab_dir / f"cluster-{os.getpid()}-{secrets.token_hex(2)}"
    cookie = secrets.token_hex(20).upper()
    nodes = []
    for i in range(size):
        nbase = base / f"n{i + 1}"
        (nbase / "home").mkdir(parents=True)
        (nbase / "home" / ".erlang.cookie").write_text(cookie)  # one cookie for all
        nodes.append(LabBroker(netns=netns, node=f"c{i + 1}-{suffix}@localhost",
                               port=BASE_PORT + i, dist_port=BASE_PORT + 20000 + i, base=nbase))
    cluster = Cluster(nodes, base)
    try:
        with ThreadPoolExecutor(size) as pool:
            list(pool.map(lambda n: n.start(90.0), nodes))
        first = nodes[0].node
        for n in nodes[1:]:
            n.ctl("stop_app")
            n.ctl("join_cluster", first)
            n.ctl("start_app")
            n.wait(60.0)
        running = cluster.running_nodes()
        missing = [n.node for n in nodes if n.node not in running]
        if missing:
            raise RuntimeError(f"nodes {missing} did not join: running {running}")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def remove_cluster(cluster: Cluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.base, ignore_errors=True)


def ready_for_next_module(cluster: Cluster) -> None:
    """Every node running and joined, and no queue left by an earlier module.

    The cluster is started once per test run and shared by the cluster modules
    (a start is 10 to 25 s here). A module that killed a node brings it back, but
    if it failed midway one may still be down; and the quorum queues of its
    daemons (each a Raft group) would otherwise add to every later election.
    """
    for n in cluster.nodes:
        if not n.is_up():
            n.start(90.0)
        cluster.wait_joined(n)
    # One rabbitmqctl call for all queues (each call starts an Erlang VM, ~1.5 s).
    cluster.ctl("eval", "[rabbit_amqqueue:delete(Q, false, false, <<\"tests\">>)"
                        " || Q <- rabbit_amqqueue:list()], ok.")
    left = cluster.ctl("list_queues", "-q", "--no-table-headers", "name").split()
    if left:
        raise RuntimeError(f"queues still on the cluster after deleting all: {left}")


@dataclass
class Load:
    """JOBS tap.ensure jobs, IN_FLIGHT at a time, each resent until it is answered."""

    client: VnetClient
    host_id: str
    names: list[str]
    replies: dict[str, Reply] = field(default_factory=dict)
    answered_at: dict[str, float] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)
    unanswered: dict[str, str] = field(default_factory=dict)
    """Jobs that got no answer at all within the call's timeout (resends included)."""
    timeout: float = 120.0

    async def run(self) -> None:
        sem = asyncio.Semaphore(IN_FLIGHT)

        async def one(name: str) -> None:
            async with sem:
                await self._one(name)
        await asyncio.gather(*(one(n) for n in self.names))

    async def run_until(self, done: asyncio.Event, prefix: str) -> None:
        """Keep IN_FLIGHT jobs going, on new names, until `done` is set."""
        sem = asyncio.Semaphore(IN_FLIGHT)
        tasks = []
        i = 0
        while not done.is_set():
            await sem.acquire()
            name = f"{prefix}{i}"
            i += 1
            self.names.append(name)

            async def one(n: str) -> None:
                try:
                    await self._one(n)
                finally:
                    sem.release()
            tasks.append(asyncio.create_task(one(name)))
        await asyncio.gather(*tasks)

    async def _one(self, name: str) -> None:
        mid = str(uuid.uuid4())
        t0 = time.monotonic()
        try:
            reply = await self.client.call(self.host_id, "tap.ensure",
                                           {"name": name, "bridge": "br0"},
                                           message_id=mid, timeout=self.timeout,
                                           resend_every=4)
        except CallTimeout as exc:
            self.unanswered[name] = str(exc)
            return
        self.answered_at[name] = time.monotonic()
        self.latency[name] = self.answered_at[name] - t0
        self.answers[name] = self.answers.get(name, 0) + 1
        self.replies[name] = reply

    def failover(self, killed_at: float) -> float:
        before = max((t for t in self.answered_at.values() if t <= killed_at), default=killed_at)
        after = min(t for t in self.answered_at.values() if t > killed_at)
        return after - before


def p99(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


# ---------------------------------------------------------------- rolling restarts, fleets
# (used by test_cluster_rolling.py and test_cluster_broadcast.py)

def queue_online(cluster: Cluster, queue: str) -> tuple[list[str], list[str]]:
    """(members, online members) of a quorum queue, from `rabbitmqctl list_queues`."""
    out = cluster.ctl("list_queues", "-q", "--no-table-headers", "name", "members", "online")
    for line in out.splitlines():
        parts = line.split("\t")
        if parts[0].strip() == queue and len(parts) >= 3:
            names = re.compile(r"[\w.\-]+@[\w.\-]+")
            return names.findall(parts[1]), names.findall(parts[2])
    raise LookupError(f"queue {queue} not found in:\n{out}")


def leaders(cluster: Cluster) -> dict[str, str]:
    """Every queue's leader node (quorum queues; a classic queue's node)."""
    out = cluster.ctl("list_queues", "-q", "--no-table-headers", "name", "leader")
    return dict(line.split("\t")[:2] for line in out.splitlines() if line.count("\t") >= 1)


def wait_member_online(cluster: Cluster, node: LabBroker, queues: list[str],
                       timeout: float = 60.0) -> None:
    """Until `node` is a member of every queue and online in it (its Raft member runs)."""
    deadline = time.monotonic() + timeout
    while True:
        state = {q: queue_online(cluster, q) for q in queues}
        if all(node.node in m and node.node in o for m, o in state.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{node.node} not back online in {state}")
        time.sleep(0.3)


def evidence(cluster: Cluster, queue: str) -> str:
    """What the brokers say about a host queue: for a failure's message."""
    parts = []
    for title, args in (
            ("quorum_status", ("eval", f'rabbit_quorum_queue:status(<<"/">>, <<"{queue}">>).')),
            ("list_queues", ("list_queues", "name", "leader", "members", "online",
                             "messages_ready", "messages_unacknowledged", "consumers")),
            ("list_consumers", ("list_consumers", "queue_name", "channel_pid", "ack_required",
                                "prefetch_count", "active"))):
        try:
            parts.append(f"--- {title}\n{cluster.ctl(*args)}")
        except Exception as exc:
            parts.append(f"--- {title}: {exc}")
    return "\n".join(parts)


@dataclass
class PacedLoad(Load):
    """Load at a steady rate (at most IN_FLIGHT at a time) until told to stop.

    A restart of every node takes tens of seconds: at full speed that would be
    tens of thousands of TAPs in one namespace. At `rate` per second the jobs
    keep flowing through every restart and still pile up to IN_FLIGHT while a
    node is away (no burst to catch up afterwards)."""

    rate: float = 40.0
    bridges: int = 1
    """TAP i goes on bridge br(i mod bridges): a bridge takes at most 1,023 ports (the
    kernel's BR_MAX_PORTS is 1,024; the next attach fails with EXFULL)."""

    def bridge_of(self, name: str) -> str:
        return f"br{int(name.lstrip('abcdefghijklmnopqrstuvwxyz')) % self.bridges}"

    async def run_paced(self, done: asyncio.Event, prefix: str) -> None:
        sem = asyncio.Semaphore(IN_FLIGHT)
        tasks = []
        next_at = time.monotonic()
        while not done.is_set():
            await sem.acquire()
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at + 1.0 / self.rate, time.monotonic())
            name = f"{prefix}{len(self.names)}"
            self.names.append(name)

            async def one(n: str) -> None:
                try:
                    await self._one(n)
                finally:
                    sem.release()
            tasks.append(asyncio.create_task(one(name)))
        await asyncio.gather(*tasks)

    async def _one(self, name: str) -> None:
        # Load._one, with the TAP's bridge from bridge_of
        mid = str(uuid.uuid4())
        t0 = time.monotonic()
        try:
            reply = await self.client.call(self.host_id, "tap.ensure",
                                           {"name": name, "bridge": self.bridge_of(name)},
                                           message_id=mid, timeout=self.timeout,
                                           resend_every=4)
        except CallTimeout as exc:
            self.unanswered[name] = str(exc)
            return
        self.answered_at[name] = time.monotonic()
        self.latency[name] = self.answered_at[name] - t0
        self.answers[name] = self.answers.get(name, 0) + 1
        self.replies[name] = reply

    def max_gap(self, start: float, end: float) -> float:
        """The longest time without any reply between `start` and `end`."""
        times = sorted(t for t in self.answered_at.values() if start <= t <= end)
        points = [start, *times, end]
        return max(b - a for a, b in itertools.pairwise(points))


@dataclass
class BroadcastResult:
    first: dict[str, Reply]
    """The first reply of each host."""
    at: dict[str, float]
    """When each host's first reply arrived (seconds after the first send)."""
    copies: dict[str, int]
    """Replies per host, the first included (more: resends answered from the dedupe cache)."""
    resends: int
    elapsed: float
    started: float
    """time.monotonic() of the first send."""


class BroadcastClient(VnetClient):
    """VnetClient with a broadcast that knows whom it expects.

    `VnetClient.broadcast` gathers what comes within a fixed time; a control
    plane that must reach every host of a known list does what `call` does for
    one host: it sends the job to `hosts.all` once, with a message_id, and
    resends it (same message_id, same correlation id) to each host that has
    not answered after `resend_every`, until all have or `timeout`. Each daemon
    answers a resent message_id from its dedupe cache."""

    async def broadcast_all(self, op: str, args: dict[str, Any] | None, hosts: set[str], *,
                            message_id: str | None = None, timeout: float = 60.0,
                            resend_every: float = 3.0,
                            first_reply: asyncio.Event | None = None) -> BroadcastResult:
        """`first_reply` is set when the first host has answered."""
        correlation_id = str(uuid.uuid4())
        message_id = message_id or str(uuid.uuid4())
        gathered: list[Reply] = []
        self._waiting[correlation_id] = (None, gathered)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        started = time.monotonic()
        first: dict[str, Reply] = {}
        at: dict[str, float] = {}
        copies: dict[str, int] = {}
        resends = 0
        seen = 0

        def take() -> None:
            nonlocal seen
            for r in gathered[seen:]:
                if r.host_id is None:
                    continue
                copies[r.host_id] = copies.get(r.host_id, 0) + 1
                if r.host_id not in first:
                    first[r.host_id] = r
                    at[r.host_id] = loop.time() - t0
                    if first_reply is not None:
                        first_reply.set()
            seen = len(gathered)

        async def send(key: str) -> None:
            with contextlib.suppress(TimeoutError, aio_pika.exceptions.AMQPError,
                                     ConnectionError, RuntimeError):
                # bounded: a publish can hang while the connection is away
                await asyncio.wait_for(
                    self._publish(key, op, args, correlation_id, message_id), resend_every)
        try:
            await send("hosts.all")
            sent_at = loop.time()
            while True:
                take()
                missing = hosts - set(first)
                if not missing:
                    break
                if loop.time() - t0 > timeout:
                    raise CallTimeout(f"{op} broadcast: no reply from {sorted(missing)} "
                                      f"within {timeout:g}s")
                if loop.time() - sent_at >= resend_every:
                    for h in sorted(missing):
                        await send(f"host.{h}")
                    resends += 1
                    sent_at = loop.time()
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # copies still on their way are counted too
            take()
            return BroadcastResult(first, at, copies, resends, max(at.values()), started)
        finally:
            self._waiting.pop(correlation_id, None)


@contextlib.contextmanager
def frozen(node: LabBroker) -> Iterator[None]:
    """The node's Erlang VM stopped (SIGSTOP) inside the block, resumed after.

    A frozen node is not seen as down (its connections stay open) but takes
    part in nothing: with another node killed, a 3-node cluster's quorum
    queues can then elect no leader until the block ends."""
    pid = int((node.base / "rabbit.pid").read_text().split()[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def kill_now(node: LabBroker) -> float:
    """SIGKILL the node's Erlang VM at once (broker.sh kill takes about 2 s here to
    find the process: too late to land inside a broadcast that lasts 0.2 s), then
    let broker.sh tidy up (pid file, epmd). Returns when the signal was sent."""
    pid = int((node.base / "rabbit.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    sent = time.monotonic()
    await node.akill()
    return sent
