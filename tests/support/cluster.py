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


def wait_queue_online(cluster: Cluster, queue: str, timeout: float = 60.0) -> None:
    """Until every member of a quorum queue is online again (after a node's restart).

    Killing a second node before the first one's member is back would leave
    the queue without a quorum: a 3-node cluster tolerates one loss at a time,
    which is what a kill round measures."""
    deadline = time.monotonic() + timeout
    while True:
        out = cluster.ctl("list_queues", "-q", "--no-table-headers", "name", "members", "online")
        for line in out.splitlines():
            name, _, rest = line.partition("\t")
            if name == queue:
                members_s, _, online_s = rest.partition("\t")
                members = set(re.findall(r"[\w.\-]+@[\w.\-]+", members_s))
                online = set(re.findall(r"[\w.\-]+@[\w.\-]+", online_s))
                if members and members <= online:
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(f"members of {queue} not all online:\n{out}")
        time.sleep(0.5)
