"""`vnetctl segment ensure`: one VXLAN segment on a set of hosts, in parallel.

    vnetctl segment ensure --vni 100 --bridge br-a --vxlan vx-a [--proxy] [--mtu 1450] \\
        hv1=198.51.100.11 hv2=198.51.100.12 hv3=198.51.100.13 \\
        [--guest hv1=52:54:00:0a:00:01/10.9.0.1 ...]

Each host gets one batch job (bridge.ensure, vxlan.ensure, fdb.converge) with
the others as its remote VTEPs and their guests as unicast FDB (and, with
--proxy, neighbour) entries: `vnetd.fleet.ensure_segment`. A progress bar on
stderr, then one row per host. Re-running the same command repairs drift.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any

from vnetd.cli.render import Progress, table
from vnetd.client import VnetClient
from vnetd.fleet import Guest, Host, HostResult, Segment, ensure_segment

EX_FAILED, EX_USAGE, EX_UNAVAILABLE = 1, 64, 69
_VALUED = {"--url", "--host", "--timeout", "--message-id"}


def wants(argv: list[str]) -> bool:
    """True when the first positional argument of a vnetctl command line is `segment`."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED:
            skip = True
        elif not arg.startswith("-"):
            return arg == "segment"
    return False


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The segment's own options (vnetctl adds its common ones: --url, --timeout, --json)."""
    p.add_argument("--vni", type=int, required=True)
    p.add_argument("--bridge", required=True, help="the segment's bridge on every host")
    p.add_argument("--vxlan", required=True, help="the VXLAN device's name on every host")
    p.add_argument("--proxy", action="store_true", help="ARP/ND suppression")
    p.add_argument("--mtu", type=int, default=None)
    p.add_argument("--dstport", type=int, default=4789)
    p.add_argument("--no-unicast", action="store_true",
                   help="flood only: no unicast FDB entries for the guests")
    p.add_argument("--guest", action="append", default=[], metavar="HOST=MAC[/IP]",
                   help="a guest on HOST (repeat)")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto")
    p.add_argument("verb", choices=["ensure"])
    p.add_argument("hosts", nargs="+", metavar="HOST=LOCAL[@DEV]",
                   help="a host id and its underlay address (optionally its underlay device)")


def parser(url: str) -> argparse.ArgumentParser:
    """A stand-alone parser of `vnetctl segment ...` (what the unit tests drive)."""
    p = argparse.ArgumentParser(prog="vnetctl segment",
                                description="Ensure one VXLAN segment on many hosts at once.")
    p.add_argument("--url", default=url, help="broker URL (env VNETCTL_URL)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per host (default 30)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("segment", choices=["segment"], help=argparse.SUPPRESS)
    add_arguments(p)
    return p


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """`vnetctl segment` as a subcommand of vnetctl (its EXTENSIONS hook)."""
    p = sub.add_parser("segment", help="ensure one VXLAN segment on many hosts at once",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    common(p)
    p.set_defaults(local=_from_vnetctl)


def _from_vnetctl(ns: argparse.Namespace) -> int:
    ns.json = ns.output != "table"
    if ns.timeout is None:
        ns.timeout = 30.0
    return run_parsed(ns)


def parse_hosts(items: list[str], guests: list[str]) -> list[Host]:
    found: dict[str, tuple[str, str | None]] = {}
    for item in items:
        host, sep, rest = item.partition("=")
        if not sep or not host or not rest:
            raise ValueError(f"host {item!r}: expected HOST=LOCAL or HOST=LOCAL@DEV")
        local, _, dev = rest.partition("@")
        if host in found:
            raise ValueError(f"host {host} given twice")
        found[host] = (local, dev or None)
    per_host: dict[str, list[Guest]] = {h: [] for h in found}
    for item in guests:
        host, sep, rest = item.partition("=")
        if host not in per_host or not sep:
            raise ValueError(f"guest {item!r}: expected HOST=MAC[/IP] with HOST one of the hosts")
        mac, _, ip = rest.partition("/")
        per_host[host].append(Guest(mac.lower(), ip or None))
    return [Host(h, local, dev, tuple(per_host[h])) for h, (local, dev) in found.items()]


def _counts(d: dict[str, int]) -> str:
    return "/".join(str(d.get(k, 0)) for k in ("remotes", "fdb", "neighbours"))


def result_table(results: list[HostResult]) -> str:
    rows = []
    for r in results:
        status = "ok" if r.ok else f"FAILED at {r.step}: {(r.error or {}).get('message', '')}"
        rows.append([r.host_id, status, "yes" if r.created else "no", str(r.remotes),
                     _counts(r.added), _counts(r.removed), str(len(r.conflicts)),
                     f"{r.seconds * 1000:.0f}"])
    return table(rows, ["HOST", "RESULT", "CREATED", "REMOTES", "ADDED r/f/n", "REMOVED r/f/n",
                        "CONFLICTS", "MS"])


async def run(ns: argparse.Namespace, hosts: list[Host]) -> int:
    segment = Segment(vni=ns.vni, bridge=ns.bridge, vxlan=ns.vxlan, proxy=ns.proxy,
                      mtu=ns.mtu, dstport=ns.dstport, unicast=not ns.no_unicast)
    enabled = ns.progress == "always" or (ns.progress == "auto" and sys.stderr.isatty())
    progress = Progress(len(hosts), sys.stderr, enabled=enabled)
    async with VnetClient(ns.url) as client:
        results = await ensure_segment(client, segment, hosts, timeout=ns.timeout,
                                       on_done=lambda r: progress.advance(r.ok))
    progress.close()
    if ns.json:
        out: list[dict[str, Any]] = [dataclasses.asdict(r) for r in results]
        print(json.dumps(out, indent=2))
    else:
        print(result_table(results))
    return 0 if all(r.ok for r in results) else EX_FAILED


def main(argv: list[str], url: str) -> int:
    return run_parsed(parser(url).parse_args(argv))


def run_parsed(ns: argparse.Namespace) -> int:
    try:
        hosts = parse_hosts(ns.hosts, ns.guest)
        if not 1 <= ns.vni <= 16_777_215:
            raise ValueError("--vni must be 1..16777215")
        return asyncio.run(run(ns, hosts))
    except ValueError as exc:
        print(f"vnetctl segment: {exc}", file=sys.stderr)
        return EX_USAGE
    except (OSError, ConnectionError) as exc:
        print(f"vnetctl: cannot reach the broker at {ns.url.split('@')[-1]}: {exc}",
              file=sys.stderr)
        return EX_UNAVAILABLE
