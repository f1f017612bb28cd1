"""Cluster figures: `python -m bench.cluster [--rounds 20] [--jobs 500]`.

One run, in a lab of its own (as `python -m bench` makes), with a 3-node
RabbitMQ cluster beside the lab's single broker:

1. Throughput: `--jobs` tap.ensure jobs, 64 in flight, through the single
   broker and through the cluster (a daemon on each), interleaved 3 times;
   medians and the ratio.
2. `--rounds` kill rounds under the same load, alternating the node the daemon
   is connected to and the host queue's leader (SIGKILL; the node is started
   again and rejoins before the next round): failover time (last reply before
   the kill to the first after), p99 job latency of the round, jobs lost,
   duplicated effects, silent event gaps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import lab as lab_mod
from bench import report
from tests.integration.events_subscriber import Subscriber
from tests.support import netns as nsmod
from tests.support.cluster import (
    Cluster,
    Load,
    p99,
    remove_cluster,
    start_cluster,
    wait_member_online,
)
from tests.support.daemon import DaemonProcess
from tests.support.env import REPO_ROOT
from vnetd.amqp import topology
from vnetd.client import CallTimeout, VnetClient

OUT = REPO_ROOT / "bench" / "results"


def log(msg: str) -> None:
    print(f"[bench.cluster] {msg}", file=sys.stderr, flush=True)


async def _start(lab: lab_mod.Lab, netns: str, url: str, urls: list[str] | None,
                 tag: str) -> DaemonProcess:
    host_id = f"bc-{lab.suffix}-{tag}"
    extra: dict[str, Any] = {"amqp": {"urls": urls}} if urls else {}
    d = DaemonProcess(host_id=host_id, amqp_url=url, netns=netns,
                      workdir=lab.dir / "daemons" / host_id, extra=extra, ready_timeout=90)
    await d.start()
    return d


async def _load(client: VnetClient, d: DaemonProcess, prefix: str, jobs: int) -> Load:
    assert (await client.call(d.host_id, "bridge.ensure", {"name": "br0"}, timeout=60)).ok
    return Load(client, d.host_id, [f"{prefix}{i}" for i in range(jobs)])


async def _clear(client: VnetClient, d: DaemonProcess, names: list[str]) -> None:
    sem = asyncio.Semaphore(64)

    async def one(n: str) -> None:
        async with sem:
            # A stalled queue (a round's `unanswered`) must not end the run: the
            # TAP stays, under a name no later round uses.
            with contextlib.suppress(CallTimeout):
                await client.call(d.host_id, "tap.delete", {"name": n}, timeout=120,
                                  resend_every=4)
    await asyncio.gather(*(one(n) for n in names))


async def throughput(lab: lab_mod.Lab, subs: lab_mod.SubNamespaces, cluster: Cluster,
                     jobs: int, reps: int = 3) -> dict[str, Any]:
    single_ns, cluster_ns = subs.new(), subs.new()
    single = await _start(lab, single_ns, lab.amqp_url, None, "single")
    clustered = await _start(lab, cluster_ns, cluster.urls[0], cluster.urls, "cluster")
    rates: dict[str, list[float]] = {"single": [], "cluster": []}
    try:
        for rep in range(reps):
            for kind, d, urls in (("single", single, [lab.amqp_url]),
                                  ("cluster", clustered, cluster.urls)):
                async with VnetClient(urls) as client:
                    load = await _load(client, d, f"t{rep}x", jobs)
                    t0 = time.monotonic()
                    await load.run()
                    rates[kind].append(jobs / (time.monotonic() - t0))
                    await _clear(client, d, load.names)
                log(f"throughput {kind} rep {rep}: {rates[kind][-1]:.0f} jobs/s")
    finally:
        await single.stop()
        await clustered.stop()
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"jobs": jobs, "reps": reps, "rates": rates, "median_single": med["single"],
            "median_cluster": med["cluster"], "ratio": med["cluster"] / med["single"]}


def args_evidence(r: int) -> Path:
    return OUT / "cluster-evidence" / f"round-{r}.txt"


STALL_SECONDS = 10.0


async def _watch_stall(cluster: Cluster, victim: Any, d: DaemonProcess, client: VnetClient,
                       load: Load, queue: str, path: Path) -> None:
    """When no reply has come for STALL_SECONDS after the kill: write down what the
    surviving nodes, the daemon and the client see (once, and again 20 s later)."""
    last_count, last_change = len(load.replies), time.monotonic()
    shots = 0
    while shots < 2:
        await asyncio.sleep(1.0)
        if len(load.replies) != last_count:
            last_count, last_change = len(load.replies), time.monotonic()
            continue
        if time.monotonic() - last_change < STALL_SECONDS * (1 + 2 * shots):
            continue
        shots += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        parts = [f"== stall {shots}: no reply for {time.monotonic() - last_change:.1f}s, "
                 f"{len(load.replies)}/{len(load.names)} answered; victim {victim.node}; "
                 f"client node {client.node}, client pending {len(client._waiting)}"]
        for n in cluster.nodes:
            if n is victim:
                continue
            for args in (("list_queues", "name", "messages", "messages_ready",
                          "messages_unacknowledged", "consumers", "leader", "members",
                          "online", "state"),
                         ("list_consumers", "queue_name", "channel_pid", "consumer_tag",
                          "ack_required", "prefetch_count", "active", "activity_status"),
                         ("list_connections", "name", "user", "state", "channels",
                          "client_properties"),
                         ("list_channels", "name", "connection", "number", "consumer_count",
                          "messages_unacknowledged", "messages_unconfirmed", "prefetch_count"),
                         ("eval", f'rabbit_quorum_queue:status(<<"/">>, <<"{queue}">>).')):
                try:
                    out = await asyncio.to_thread(n.ctl, *args, timeout=30)
                except Exception as exc:  # evidence, not a check
                    out = f"failed: {exc}"
                parts.append(f"--- {n.node}: rabbitmqctl {' '.join(args[:1])}\n{out}")
        parts.append("--- daemon log tail\n" + d.log_tail(120))
        with path.open("a") as f:
            f.write("\n".join(parts) + "\n")
        log(f"stall evidence written to {path}")


async def kill_rounds(lab: lab_mod.Lab, subs: lab_mod.SubNamespaces, cluster: Cluster,
                      rounds: int, jobs: int) -> list[dict[str, Any]]:
    netns = subs.new()
    d = await _start(lab, netns, cluster.urls[0], cluster.urls, "kill")
    queue = topology.host_queue_name(d.host_id)
    out = []
    try:
        for r in range(rounds):
            kind = "connected" if r % 2 == 0 else "leader"
            async with VnetClient(cluster.urls) as client:
                health = (await client.call(d.host_id, "host.health", timeout=60,
                                            resend_every=2)).result
                connected = cluster.node_at(health["broker_node"])
                leader = cluster.by_name(cluster.leader(queue))
                victim = connected if kind == "connected" else leader
                if connected is leader:  # one node is both: neither figure alone
                    kind = "leader+connected"
                survivor = next(n for n in cluster.nodes if n is not victim)
                snap = await client.call(d.host_id, "host.snapshot", timeout=60)
                epoch = snap.result["events"]["epoch"]
                sub_url = f"amqp://guest:guest@127.0.0.1:{survivor.port}/"
                async with Subscriber(sub_url, d.host_id) as sub:
                    load = await _load(client, d, f"k{r}x", jobs)
                    load.timeout = 60.0
                    runner = asyncio.create_task(load.run())
                    while len(load.replies) < jobs // 4 and not runner.done():
                        await asyncio.sleep(0.01)
                    killed_at = time.monotonic()
                    await victim.akill()
                    watch = asyncio.create_task(_watch_stall(
                        cluster, victim, d, client, load, queue, args_evidence(r)))
                    await asyncio.wait_for(runner, 300)
                    watch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watch
                    await sub.quiet(1.0, timeout=60)
                    seqs = sorted({x.seq for x in sub.received if x.event.get("epoch") == epoch})
                    announced = {s for x in sub.received if x.type == "host.resync"
                                 and x.data.get("lost")
                                 for s in range(int(x.data["lost"]["first"]),
                                                int(x.data["lost"]["last"]) + 1)}
                    gaps = [s for s in range(seqs[0], seqs[-1] + 1)
                            if s not in set(seqs) and s not in announced] if seqs else []
                links = nsmod.links(netns)
                lost = [n for n in load.names if n not in load.replies or n not in links]
                stalled = len(load.unanswered)
                twice = [n for n, rep in load.replies.items()
                         if rep.result.get("created") is not True]
                half = [n for n in load.names if n in links
                        and (links[n].get("master") != "br0"
                             or links[n].get("ifalias") != "vnetd:v1")]
                row = {"round": r, "killed": kind, "victim": victim.node,
                       "failover_s": load.failover(killed_at),
                       "p99_s": p99(list(load.latency.values())),
                       "lost": len(lost), "not_ok": sum(not x.ok for x in load.replies.values()),
                       "duplicated_effects": len(twice), "half_done": len(half),
                       "silent_gaps": len(gaps), "unanswered": stalled,
                       "publisher_renewals": client.publisher_renewals}
                log(f"round {r}: {row}")
                out.append(row)
                await _clear(client, d, load.names)
            await cluster.arestart(victim)
            await asyncio.to_thread(wait_member_online, cluster, victim, [queue])
    finally:
        await d.stop()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    lab = lab_mod.Lab.from_env()
    subs = lab_mod.SubNamespaces(lab)
    t0 = time.monotonic()
    cluster = await asyncio.to_thread(start_cluster, lab.netns, lab.dir, lab.suffix)
    log(f"cluster up in {time.monotonic() - t0:.1f}s")
    try:
        tp = (await throughput(lab, subs, cluster, args.throughput_jobs or args.jobs)
              if args.throughput else None)
        rounds = await kill_rounds(lab, subs, cluster, args.rounds, args.jobs)
    finally:
        await asyncio.to_thread(remove_cluster, cluster)
        subs.cleanup()
    return {"throughput": tp, "rounds": rounds,
            "meta": {"cpus": os.cpu_count(), "load": os.getloadavg(), "jobs": args.jobs,
                     "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}


def markdown(r: dict[str, Any]) -> str:
    tp, rounds = r["throughput"], r["rounds"]
    lines = [f"# Cluster figures ({r['meta']['time']}, load {r['meta']['load'][0]:.1f} on "
             f"{r['meta']['cpus']} CPUs, {r['meta']['jobs']} jobs per kill round, "
             "64 in flight)", "",
             f"| throughput ({tp['jobs']} tap.ensure, median of 3, interleaved) | jobs/s |",
             "|---|---|",
             f"| single broker | {tp['median_single']:.0f} |",
             f"| 3-node cluster (quorum queue, 3 replicas) | {tp['median_cluster']:.0f} |",
             f"| ratio cluster / single | {tp['ratio']:.2f} |", "",
             "Each rep, jobs/s: single " + ", ".join(f"{x:.0f}" for x in tp["rates"]["single"])
             + "; cluster " + ", ".join(f"{x:.0f}" for x in tp["rates"]["cluster"])
             + " (a spread this wide says the machine was busy: read the ratio as rough).", "",
             "| node killed | rounds | failover median (max) s | p99 latency median (max) s |",
             "|---|---|---|---|"]
    for kind in sorted({x["killed"] for x in rounds}):
        rs = [x for x in rounds if x["killed"] == kind]
        fo, pp = [x["failover_s"] for x in rs], [x["p99_s"] for x in rs]
        lines.append(f"| {kind} | {len(rs)} | {statistics.median(fo):.2f} ({max(fo):.2f}) | "
                     f"{statistics.median(pp):.2f} ({max(pp):.2f}) |")
    total = {k: sum(x[k] for x in rounds) for k in
             ("lost", "not_ok", "duplicated_effects", "half_done", "silent_gaps",
              "unanswered")}
    lines += ["", f"Over {len(rounds)} rounds: jobs lost {total['lost']} (of which "
              f"{total['unanswered']} never answered within 60 s: a stall), failed "
              f"{total['not_ok']}, duplicated effects {total['duplicated_effects']}, "
              f"half-done {total['half_done']}, silent event gaps {total['silent_gaps']} "
              "(goal 0 each).",
              f"Nacked publishing channels replaced by the client: "
              f"{sum(x.get('publisher_renewals', 0) for x in rounds)} (in "
              f"{sum(1 for x in rounds if x.get('publisher_renewals'))} rounds): the stall "
              "these rounds used to show, answered now (bench/results/cluster-stall-evidence.txt).",
              "", "Failover: last reply before the kill to the first after. p99: of all the "
              "round's jobs (each from its first send to its answer, resends included).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--throughput-jobs", type=int, default=0,
                   help="jobs per throughput run (default: --jobs)")
    p.add_argument("--no-throughput", dest="throughput", action="store_false",
                   help="kill rounds only (to chase a stall)")
    args = p.parse_args(argv)
    if not lab_mod.in_lab():
        with lab_mod.private_lab() as (netns, env):
            cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "bench.cluster",
                   *(sys.argv[1:] if argv is None else argv)]
            return subprocess.run(cmd, env={**os.environ, **env}, cwd=REPO_ROOT,
                                  check=False).returncode
    result = asyncio.run(run(args))
    if result["throughput"] is None:
        sys.stdout.write(json.dumps(result["rounds"], indent=1) + "\n")
        return 0
    sys.stdout.write(report.write_pair(args.out, "cluster", result, markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
