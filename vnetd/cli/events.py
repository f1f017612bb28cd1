"""`vnetctl events`: print a host's events as they arrive, one line each.

    vnetctl events                       # every host, 5 s of events
    vnetctl events --host hv1 --type 'link.*' --follow
    vnetctl events --json --follow       # the raw CloudEvents, one JSON per line

It binds a private, exclusive queue to the `vnetd.events` topic exchange, so it
sees only what is published while it runs. `--type` is a glob on the dotted
type (`link.*`, `host.resync`); `--host` selects one host. A jump in
`sequence` within an epoch is printed as a GAP line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import json
import sys
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from vnetd.amqp.connection import connect_cluster
from vnetd.client import split_urls

EXCHANGE = "vnetd.events"
TYPE_PREFIX = "io.vnetd."
EX_UNAVAILABLE = 69
DEFAULT_TIMEOUT = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `vnetctl events` beside vnetctl's common ones (--url, --host as a
    filter: default every host, --timeout: default 5 s, --json: raw CloudEvents)."""
    p.add_argument("--type", default="*", dest="type_glob",
                   help="glob on the event type, e.g. 'link.*' (default: all)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing until interrupted")
    p.add_argument("--count", type=int, default=0, help="stop after this many events")


def parser(url: str, host: str | None) -> argparse.ArgumentParser:
    """A stand-alone parser of the same options (what tests drive the Printer with)."""
    p = argparse.ArgumentParser(prog="vnetctl events",
                                description="Print vnetd events as they arrive.")
    p.add_argument("--url", default=url, help="broker URL (env VNETCTL_URL)")
    p.add_argument("--host", default=host, help="only this host id (default: every host)")
    p.add_argument("--timeout", type=float, default=None,
                   help=f"without --follow: stop after this many seconds (default "
                        f"{DEFAULT_TIMEOUT:g})")
    p.add_argument("--json", dest="output", action="store_const", const="json",
                   default="table", help="print each raw CloudEvent as JSON")
    add_arguments(p)
    p.add_argument("events", choices=["events"], help=argparse.SUPPRESS)
    return p


def summary(event: dict[str, Any]) -> str:
    """The interesting part of an event's data, for humans."""
    kind = str(event.get("type", "")).removeprefix(TYPE_PREFIX)
    data = event.get("data") or {}
    if kind == "link.changed":
        prev = data.get("previous") or {}
        return " ".join(f"{k} {json.dumps(prev.get(k))}->{json.dumps(data.get(k))}"
                        for k in data.get("changes") or [])
    if kind.startswith("link."):
        return (f"{data.get('kind')} {data.get('state')} mtu {data.get('mtu')}"
                + (f" master {data['master']}" if data.get("master") else "")
                + (" owned" if data.get("owned") else ""))
    if kind.startswith("address."):
        return f"{data.get('address')}/{data.get('prefixlen')} {data.get('scope')}"
    if kind.startswith("command."):
        err = data.get("error") or {}
        tail = f" {err.get('code')}: {err.get('message')}" if err else ""
        return f"{data.get('op')} {data.get('duration_ms')} ms{tail}"
    if kind == "host.resync":
        lost = data.get("lost")
        gap = f" lost {lost['first']}..{lost['last']} ({lost['count']})" if lost else ""
        return f"{data.get('reason')} changes={data.get('changes', '-')}{gap}"
    if kind.startswith("host."):
        return f"{data.get('status', '')} v{data.get('version', '?')}".strip()
    return json.dumps(data, sort_keys=True)[:200]


def line(event: dict[str, Any]) -> str:
    host = str(event.get("source", "")).removeprefix("vnetd://")
    kind = str(event.get("type", "")).removeprefix(TYPE_PREFIX)
    return (f"{event.get('time', '')} {host} #{event.get('sequence')} {kind} "
            f"{event.get('subject') or '-'} {summary(event)}").rstrip()


class Printer:
    def __init__(self, ns: argparse.Namespace, done: asyncio.Event) -> None:
        self.ns = ns
        self.done = done
        self.printed = 0
        self.last: dict[str, tuple[str, int]] = {}

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = json.loads(message.body)
        except ValueError:
            print(f"(not JSON: {message.body[:80]!r})", flush=True)
            return
        if not isinstance(event, dict):
            return
        kind = str(event.get("type", "")).removeprefix(TYPE_PREFIX)
        source = str(event.get("source", ""))
        seq = event.get("sequence")
        epoch = str(event.get("epoch"))
        if isinstance(seq, int):
            prev = self.last.get(source)
            if prev is not None and prev[0] == epoch and seq > prev[1] + 1:
                print(f"GAP {source.removeprefix('vnetd://')} sequences {prev[1] + 1}.."
                      f"{seq - 1} not seen (filtered by --type, or lost: see host.resync)",
                      flush=True)
            self.last[source] = (epoch, seq)
        if not fnmatch.fnmatchcase(kind, self.ns.type_glob):
            return
        print(json.dumps(event) if self.ns.output != "table" else line(event), flush=True)
        self.printed += 1
        if self.ns.count and self.printed >= self.ns.count:
            self.done.set()


async def run(ns: argparse.Namespace) -> int:
    connection = await connect_cluster(split_urls(ns.url), name="vnetctl-events")
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC,
                                                  durable=True)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        # Host ids may contain dots: bind the host's whole subtree and filter types here.
        await queue.bind(exchange, routing_key=f"{ns.host}.#" if ns.host else "#")
        done = asyncio.Event()
        printer = Printer(ns, done)
        await queue.consume(printer.on_message, no_ack=True)
        if ns.follow:
            await done.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), ns.timeout if ns.timeout is not None
                                       else DEFAULT_TIMEOUT)
    return 0


def run_main(ns: argparse.Namespace) -> int:
    """`vnetctl events` with the parsed options; 69 when the broker cannot be reached."""
    try:
        return asyncio.run(run(ns))
    except KeyboardInterrupt:
        return 0
    except (OSError, ConnectionError) as exc:
        print(f"vnetctl: cannot reach the broker at {ns.url.split('@')[-1]}: {exc}",
              file=sys.stderr)
        return EX_UNAVAILABLE
