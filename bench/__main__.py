"""Entry point: `python -m bench [--quick] [--before REF] [--out DIR]`.

Outside the lab it makes one (namespace `vnetd-bench-<hex>` with a private RabbitMQ),
re-runs itself inside it and tears it down afterwards, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

from bench import lab as lab_mod
from tests.support.env import REPO_ROOT

DEFAULT_OUT = REPO_ROOT / "bench" / "results"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="N=100 only, one repetition, 64 in flight (under 60 s)")
    p.add_argument("--before", metavar="REF", default=None,
                   help="also run vnetd as of git REF (e.g. a commit before a change), "
                        "side by side: before/after figures")
    p.add_argument("--ref", metavar="REF", default=None,
                   help="measure vnetd as committed at git REF (e.g. HEAD) instead of the "
                        "working tree, which other engineers may be editing")
    p.add_argument("--profile", type=Path, default=None, metavar="FILE",
                   help="record a py-spy profile of the daemon during plug/unplug")
    p.add_argument("--only", choices=["events", "plug", "libvirt"], default=None,
                   help="run one scenario only (events: the rates 1,000 to 20,000/s "
                        "and as fast as possible; with --before, old and new side by side; "
                        "plug: plug/unplug with the no-op responders and the load client "
                        "check; libvirt: the full run's 4 x 30 cycles, 5 x 2 with --quick)")
    p.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=None,
                   metavar="N[,N...]", help="the plug scenario's sizes (default: the mode's); "
                   "a size not in the mode gets 3 repetitions")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def inner(args: argparse.Namespace) -> int:
    from bench import report
    from bench.runner import Env, Plan, export_tree, run_all

    lab = lab_mod.Lab.from_env()
    subs = lab_mod.SubNamespaces(lab)
    env = Env(amqp_url=lab.amqp_url, new_ns=subs.new, del_ns=subs.delete,
              workdir=lab.dir, suffix=lab.suffix)
    plan = Plan.quick() if args.quick else Plan.full(args.before)
    if args.only == "events":
        plan.event_rates = [1000.0, 5000.0, 10000.0, 15000.0, 20000.0, 25000.0, None]
        plan.event_seconds = 3.0
    plan.profile = args.profile
    if args.sizes:
        plan.reps = {n: plan.reps.get(n, 3) for n in args.sizes}
        plan.sizes = args.sizes
    plan.before_ref = args.before
    tree = export_tree(args.ref) if args.ref else None
    if tree is not None:
        env.daemon_env["PYTHONPATH"] = str(tree)
    try:
        res = asyncio.run(run_all(env, plan, "quick" if args.quick else "full", args.only))
        res.meta["measured_tree"] = f"git {args.ref}" if args.ref else "working tree"
        res.meta["before_ref"] = args.before
    finally:
        subs.cleanup()
        if tree is not None:
            subprocess.run(["rm", "-rf", str(tree)], check=False)
    data = report.write(res, args.out)
    sys.stdout.write((args.out / "latest.md").read_text())
    del data
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if lab_mod.in_lab():
        return inner(args)
    with lab_mod.private_lab() as (netns, env):
        cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "bench",
               *(sys.argv[1:] if argv is None else argv)]
        return subprocess.run(cmd, env={**os.environ, **env}, cwd=REPO_ROOT,
                              check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
