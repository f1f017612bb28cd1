"""Fixtures shared by the integration tests of one kind."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.cluster import Cluster, ready_for_next_module, remove_cluster, start_cluster
from tests.support.daemon import DaemonFactory, DaemonProcess
from tests.support.env import Lab
from tests.support.libvirtd import PrivateLibvirtd, session_libvirtd

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def libvirtd(lab: Lab) -> Iterator[PrivateLibvirtd]:
    """A private libvirtd for the test module, in namespaces of its own."""
    yield from session_libvirtd(lab.dir / f"libvirtd-{os.getpid()}-{next(_ids)}")


_cluster: dict[str, Cluster] = {}


def _later_modules_use_cluster(request: pytest.FixtureRequest) -> bool:
    items = request.session.items
    mine = [i for i, item in enumerate(items) if getattr(item, "module", None) is request.module]
    return any("cluster" in getattr(item, "fixturenames", ())
               for item in items[max(mine, default=-1) + 1:])


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, lab: Lab) -> Iterator[Cluster]:
    """The 3-node RabbitMQ cluster, shared by the cluster modules of this run: started
    by the first (10 to 25 s here), handed to the next with every node up and joined
    and no queue of an earlier module left, removed after the last one (so the
    rest of the suite does not run beside three idle brokers)."""
    c = _cluster.get("up")
    if c is None:
        c = _cluster["up"] = start_cluster(lab.netns, lab.dir, lab.suffix)
    else:
        ready_for_next_module(c)
    try:
        yield c
    finally:
        if not _later_modules_use_cluster(request):
            remove_cluster(_cluster.pop("up"))


@pytest.fixture
async def cluster_daemon(lab: Lab, cluster: Cluster) -> AsyncIterator[DaemonFactory]:
    """``await cluster_daemon(netns, host_id=None)``: a daemon given the three URLs."""
    made: list[DaemonProcess] = []

    async def start(netns: str, host_id: str | None = None,
                    urls: list[str] | None = None) -> DaemonProcess:
        host_id = host_id or DaemonProcess.new_host_id(lab.suffix)
        urls = urls or cluster.urls
        d = DaemonProcess(host_id=host_id, amqp_url=urls[0], netns=netns,
                          workdir=lab.dir / "daemons" / host_id,
                          extra={"amqp": {"urls": urls}})
        made.append(d)
        return await d.start()

    try:
        yield start
    finally:
        for d in made:
            await d.stop()
