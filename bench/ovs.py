"""OVS port attach: vnetd's `ovs.port.attach` vs `ovs-vsctl add-port` in a loop.

`python -m bench.ovs [--ports 200] [--rounds 2]`, one run, both ways side by side:
a private ovsdb-server + ovs-vswitchd (userspace datapath) in a namespace of the
benchmark's lab, `--ports` veth ends, and per round:

- ovs-vsctl: `ovs-vsctl add-port BR vN tag=10` once per port, one process each,
  waiting for ovs-vswitchd as ovs-vsctl does by default (the shell-script way);
- vnetd: one `ovs.port.attach {name, bridge, tag: 10}` job per port, one in flight
  (request/reply over RabbitMQ; vnetd answers once ovs-vswitchd applied it: the
  same "done" as ovs-vsctl without --no-wait);
- vnetd, batched: the same jobs in one `batch` (stop_on_error false, up to 64 at once).

Each way starts from an empty bridge of its own (the ports of the previous way are
removed first, so ovs-vswitchd's reconfiguration cost is the same), and the order of
the ways alternates between rounds. Figures: ports/s of each way, median over the
rounds, and the ratio vnetd/ovs-vsctl. Outside the lab it makes one and re-runs
itself inside.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import lab as lab_mod
from bench import report
from tests.support.daemon import DaemonProcess
from tests.support.env import REPO_ROOT
from tests.support.netns import run_in
from tests.support.ovs import PrivateOvs
from tests.support.rpc import RawRpc

OUT = REPO_ROOT / "bench" / "results"
TAG = 10


def log(msg: str) -> None:
    print(f"[ovs] {msg}", file=sys.stderr, flush=True)


def make_veths(ns: str, n: int) -> list[str]:
    names = [f"ve-b{i}" for i in range(n)]
    lines = []
    for name in names:
        lines += [f"link add {name} type veth peer name {name}-p", f"link set {name} up"]
    run_in(ns, "ip", "-batch", "-", input="\n".join(lines) + "\n", timeout=120)
    return names


async def ok(rpc: RawRpc, host: str, op: str, args: dict[str, Any],
             timeout: float = 60) -> dict[str, Any]:
    reply = await rpc.call(host, op, args, timeout=timeout)
    if not reply.get("ok"):
        raise RuntimeError(f"{op} {args}: {reply}")
    return dict(reply["result"])


def way_vsctl(o: PrivateOvs, ports: list[str]) -> float:
    o.vsctl("add-br", "ob-s", "--", "set", "bridge", "ob-s", "datapath_type=netdev")
    began = time.perf_counter()
    for name in ports:
        subprocess.run(["ovs-vsctl", f"--db={o.remote}", "--timeout=30", "add-port", "ob-s",
                        name, f"tag={TAG}"], check=True, capture_output=True,
                       env={**os.environ, **o.env})
    took = time.perf_counter() - began
    o.vsctl("del-br", "ob-s")
    return took


async def way_vnetd(rpc: RawRpc, host: str, ports: list[str], *, batched: bool) -> float:
    await ok(rpc, host, "ovs.bridge.ensure", {"name": "ob-v"})
    began = time.perf_counter()
    if batched:
        res = await ok(rpc, host, "batch", {"stop_on_error": False, "commands": [
            {"op": "ovs.port.attach", "args": {"name": n, "bridge": "ob-v", "tag": TAG}}
            for n in ports]}, timeout=300)
        if res["failed"]:
            raise RuntimeError(f"batch: {res['failed']} failed: {res['results'][:3]}")
    else:
        for name in ports:
            await ok(rpc, host, "ovs.port.attach", {"name": name, "bridge": "ob-v", "tag": TAG})
    took = time.perf_counter() - began
    await ok(rpc, host, "ovs.bridge.delete", {"name": "ob-v"})
    return took


def check(o: PrivateOvs, bridge: str, ports: list[str]) -> None:
    """Independent check that a way really did its work (ovs-vsctl reads the database)."""
    have = set(o.vsctl("list-ports", bridge).stdout.split())
    if have != set(ports):
        raise RuntimeError(f"{bridge}: {len(have)} ports, wanted {len(ports)}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    lab = lab_mod.Lab.from_env()
    subs = lab_mod.SubNamespaces(lab)
    ns = subs.new()
    o = PrivateOvs(lab.dir / "ovs-bench", ns)
    d: DaemonProcess | None = None
    try:
        o.start()
        version = o.vsctl("--version").stdout.splitlines()[0]
        ports = make_veths(ns, args.ports)
        d = DaemonProcess(host_id=f"ovs-{lab.suffix}", amqp_url=lab.amqp_url, netns=ns,
                          workdir=lab.dir / "daemons" / "ovs",
                          extra={"ovs": {"enabled": True, "db": o.remote,
                                         "datapath_type": "netdev",
                                         "apply_timeout_seconds": 30.0},
                                 "policy": {"attachable": ["ve-b*"], "protected": ["lo"]},
                                 "log": {"level": "warning"}},
                          ready_timeout=60)
        await d.start()
        times: dict[str, list[float]] = {"vsctl": [], "vnetd": [], "vnetd_batch": []}
        async with RawRpc(lab.amqp_url) as rpc:
            await way_vnetd(rpc, d.host_id, ports[:5], batched=False)  # warm-up
            for r in range(args.rounds):
                order = ["vsctl", "vnetd", "vnetd_batch"]
                for way in order if r % 2 == 0 else list(reversed(order)):
                    if way == "vsctl":
                        took = await asyncio.to_thread(way_vsctl, o, ports)
                    else:
                        took = await way_vnetd(rpc, d.host_id, ports,
                                               batched=way == "vnetd_batch")
                    times[way].append(took)
                    log(f"round {r + 1}: {way}: {args.ports} ports in {took:.2f}s "
                        f"({args.ports / took:.0f}/s)")
            # the checks: one more of each, verified by ovs-vsctl before removal
            await ok(rpc, d.host_id, "ovs.bridge.ensure", {"name": "ob-v"})
            for name in ports[:20]:
                await ok(rpc, d.host_id, "ovs.port.attach",
                         {"name": name, "bridge": "ob-v", "tag": TAG})
            check(o, "ob-v", ports[:20])
            tags = {o.vsctl("get", "Port", n, "tag").stdout.strip() for n in ports[:20]}
            if tags != {str(TAG)}:
                raise RuntimeError(f"tags seen: {tags}")
    finally:
        if d is not None:
            await d.stop()
        o.stop()
        subs.cleanup()
    rate = {w: args.ports / statistics.median(t) for w, t in times.items()}
    return {
        "ports": args.ports, "rounds": args.rounds, "tag": TAG,
        "seconds": {w: [round(x, 3) for x in t] for w, t in times.items()},
        "ports_per_second_median": {w: round(v, 1) for w, v in rate.items()},
        "ratio_vnetd_vs_vsctl": round(rate["vnetd"] / rate["vsctl"], 2),
        "ratio_vnetd_batch_vs_vsctl": round(rate["vnetd_batch"] / rate["vsctl"], 2),
        "ovs_version": version,
        "loadavg": os.getloadavg(),
    }


def markdown(r: dict[str, Any]) -> str:
    p = r["ports_per_second_median"]
    return (f"# OVS port attach ({r['ports']} ports, tag {r['tag']}, median of "
            f"{r['rounds']} rounds, one run)\n\n"
            "| way | ports/s | seconds per round |\n|---|---|---|\n"
            f"| `ovs-vsctl add-port` in a loop | {p['vsctl']:.0f} | {r['seconds']['vsctl']} |\n"
            f"| vnetd `ovs.port.attach`, one in flight | {p['vnetd']:.0f} | "
            f"{r['seconds']['vnetd']} |\n"
            f"| vnetd, one `batch` (64 at once) | {p['vnetd_batch']:.0f} | "
            f"{r['seconds']['vnetd_batch']} |\n\n"
            f"Ratio vnetd / ovs-vsctl: {r['ratio_vnetd_vs_vsctl']} (one in flight), "
            f"{r['ratio_vnetd_batch_vs_vsctl']} (batch). Load average {r['loadavg']}.\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ovs", description=__doc__)
    p.add_argument("--ports", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if not lab_mod.in_lab():
        with lab_mod.private_lab() as (netns, env):
            cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "bench.ovs",
                   *(sys.argv[1:] if argv is None else argv)]
            return subprocess.run(cmd, env={**os.environ, **env}, cwd=REPO_ROOT,
                                  check=False).returncode
    result = asyncio.run(run(args))
    sys.stdout.write(report.write_pair(args.out, "ovs", result, markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
