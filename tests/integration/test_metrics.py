"""Prometheus endpoint of a running daemon: the counters move, the format parses."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartDaemon
from tests.support.rpc import RawRpc

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        ctype = resp.headers["Content-Type"]
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):  # raises on a malformed exposition
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return ctype, samples


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_scrape_during_a_run(start_daemon: StartDaemon, netns: str, amqp_url: str) -> None:
    port = _free_port()
    d = await start_daemon(netns, metrics={"enabled": True, "address": "127.0.0.1",
                                           "port": port})
    ctype, before = await asyncio.to_thread(_scrape, port)
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
    assert _value(before, "vnetd_connection_up", dependency="broker") == 1.0
    assert ("vnetd_connection_up", frozenset({("dependency", "libvirt")})) not in before

    async with RawRpc(amqp_url) as rpc:
        for i in range(5):
            assert (await rpc.call(d.host_id, "tap.ensure", {"name": f"m{i}"}))["ok"]
        bad = await rpc.call(d.host_id, "tap.ensure", {"name": "x" * 40})
        assert bad["error"]["code"] == "invalid_argument"
        mid = str(uuid.uuid4())
        for _ in range(2):  # the second delivery is answered from the dedupe cache
            assert (await rpc.call(d.host_id, "bridge.ensure", {"name": "mbr0"},
                                   message_id=mid))["ok"]

    deadline = time.monotonic() + 15
    while True:  # owned devices are refreshed a couple of seconds after jobs
        _, after = await asyncio.to_thread(_scrape, port)
        if _value(after, "vnetd_owned_devices", kind="tap") == 5.0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("vnetd_jobs_total", op="tap.ensure", outcome="ok") == 5
    # A job refused by validation is counted under the known op it named.
    assert moved("vnetd_jobs_total", op="tap.ensure", outcome="invalid_argument") == 1
    assert moved("vnetd_jobs_total", op="bridge.ensure", outcome="ok") == 1
    assert moved("vnetd_jobs_duplicate_total") == 1
    assert moved("vnetd_job_duration_seconds_count", op="tap.ensure") == 6  # 5 ok + 1 refused
    assert moved("vnetd_job_duration_seconds_sum", op="tap.ensure") > 0
    assert _value(after, "vnetd_job_duration_seconds_bucket", op="tap.ensure", le="+Inf") >= 5
    assert _value(after, "vnetd_owned_devices", kind="tap") == 5
    assert _value(after, "vnetd_owned_devices", kind="bridge") == 1
    assert await d.stop() == 0
