"""The benchmark's quick mode, as a regression test: ratios only, never absolute times.

It runs the same code as `make bench ARGS=--quick`, inside this test lab (its broker
and namespaces from the fixtures), and fails when vnetd falls behind a baseline by
more than it does now with a wide margin for the noise of a shared machine.
"""

from __future__ import annotations

import pytest

from bench import report
from bench.runner import Env, Plan, run_all
from tests.support.env import Lab
from tests.support.netns import NetnsFactory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


def _ops(data: dict, scenario: str, way: str) -> float:
    found = [m["ops_per_s"] for m in data["medians"]
             if m["scenario"] == scenario and m["way"] == way]
    assert found, f"no {scenario} figure for {way!r}: {data['medians']}"
    return float(found[0])


def _cpu(data: dict, way: str) -> float:
    found = [m["server_cpu_ms"] for m in data["medians"]
             if m["scenario"] == "plug" and m["way"] == way]
    assert found, f"no plug figure for {way!r}: {data['medians']}"
    return float(found[0])


async def test_quick_bench_ratios(lab: Lab, netns_factory: NetnsFactory, tmp_path) -> None:
    env = Env(amqp_url=lab.amqp_url, new_ns=netns_factory,
              del_ns=lambda ns: None, workdir=lab.dir / "bench", suffix=lab.suffix)
    res = await run_all(env, Plan.quick(), "quick")
    data = report.write(res, tmp_path)
    assert (tmp_path / "latest.json").exists()
    assert (tmp_path / "latest.md").read_text().startswith("# vnetd benchmark")

    e2e = _ops(data, "plug", "vnetd jobs x64")
    batch = _ops(data, "plug", "vnetd one batch")
    subprocess_way = _ops(data, "plug", "ip per step (subprocess)")
    ip_batch = _ops(data, "plug", "ip -batch")
    noop = _ops(data, "plug", "no-op responder (lean) x64")
    # Measured here (load 1-5): e2e 0.9x to 2.4x and batch 1.4x to 3.5x the subprocess
    # way; e2e ~0.25x the no-op responder. The thresholds leave room for noise but catch
    # a lost fast path (with pyroute2 decoding, batch was ~0.6x of today's figure).
    assert e2e >= 0.5 * subprocess_way, data["goals"]
    assert batch >= 0.9 * subprocess_way, data["goals"]
    assert e2e <= 1.5 * noop  # sanity: vnetd cannot beat a responder doing no work
    assert batch <= 1.5 * ip_batch  # nor one ip process doing the same kernel work

    # Concurrent deletions share one RTM_DELLINK (one RCU grace period) instead of
    # paying ~18 ms each as every one-at-a-time way does.
    unplug_e2e = _ops(data, "unplug", "vnetd jobs x64")
    unplug_ip = _ops(data, "unplug", "ip -batch")
    assert unplug_e2e >= 1.5 * unplug_ip, data["medians"]

    # The event scenario ran and matched kernel changes to the events they caused.
    assert data["events"], data["unavailable"]
    assert data["events"][0]["events_matched"] > 0, data["events"]

    scale = {s["existing_links"]: s for s in data["scale"]}
    assert scale[1000]["snapshot_links"] >= 1000
    # Resident memory (issue 11's goal, < 100 MB; 77 MB measured at 1,000 links): a
    # gross per-link blow-up fails it (the full run checks 10,000 links, 94.5 MB).
    assert scale[1000]["rss_mb"] < 100, scale

    # The existing-interfaces axis ran; a job's daemon CPU beside 1,000 TAPs is not a
    # multiple of an empty namespace's (the tight bound, 10%, is the slow test in
    # test_metrics.py at 10,000; one quick run of 100 jobs is too noisy for it).
    cpu = {m["way"]: m.get("server_cpu_ms") for m in data["medians"] if m["scenario"] == "plug"}
    at0, at1000 = cpu["vnetd jobs x64, 0 existing"], cpu["vnetd jobs x64, 1000 existing"]
    assert at0 and at1000 and at1000 <= 2.0 * at0, cpu
    # Every way reports the serving process's CPU per job.
    assert all(m.get("server_cpu_ms") is not None for m in data["medians"]), data["medians"]

    # The load client was checked against a second client process, on the lean no-op
    # responder (the figure is recorded; on a loaded machine the ratio itself is not
    # asserted).
    assert data["client_check"]["lean"]["one_process_ops_per_s"] > 0, data["client_check"]

    # The goal's baseline, the lean no-op responder, does vnetd's AMQP work (same queue,
    # confirmed reply of the same size, then the ack) for a fraction of the aio-pika
    # responder's CPU per job (measured: ~0.05-0.1 vs ~0.4-0.5 ms): a CPU figure, steadier
    # than a throughput on a shared machine.
    lean_cpu = _cpu(data, "no-op responder (lean) x64")
    assert 0 < lean_cpu <= 0.5 * _cpu(data, "no-op responder (aio-pika) x64"), data["medians"]

    # libvirt: define+start+destroy+undefine through vnetd vs libvirt-python, same
    # libvirtd; a gross regression only (a loaded machine swings small N widely).
    assert _ops(data, "libvirt", "vnetd") >= 0.5 * _ops(data, "libvirt", "libvirt-python"), \
        data["unavailable"]
