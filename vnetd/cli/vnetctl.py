"""`vnetctl`: send any op to a host and print the reply.

    vnetctl --host hv1 bridge.ensure name=br0 mtu=1450
    vnetctl --host hv1 tap.ensure --json '{"name": "tap0", "bridge": "br0"}'
    vnetctl --host hv1 bridge.list
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tomllib
from typing import Any

from vnetd.cli.render import render
from vnetd.client import CallTimeout, Reply, VnetClient

EX_FAILED = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
DEFAULT_CONFIG = "/etc/vnetd/vnetd.toml"


def _config_defaults() -> tuple[str, str]:
    """URL and host from the environment, else the local daemon's config, else localhost."""
    url, host = "amqp://guest:guest@127.0.0.1:5672/", socket.gethostname()
    path = os.environ.get("VNETD_CONFIG", DEFAULT_CONFIG)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
        url = data.get("amqp", {}).get("url", url)
        host = data.get("host_id", host)
    except (OSError, tomllib.TOMLDecodeError):
        pass
    return os.environ.get("VNETCTL_URL", url), os.environ.get("VNETCTL_HOST", host)


def parse_value(text: str) -> Any:
    """`mtu=1450` gives 1450, `up=false` False, `ports=["a"]` a list, others a string."""
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as f:
            return json.load(f)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_args_list(items: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"argument {item!r} is not key=value")
        args[key] = parse_value(value)
    return args


def _parser() -> argparse.ArgumentParser:
    url, host = _config_defaults()
    p = argparse.ArgumentParser(prog="vnetctl", description="Send jobs to vnetd hosts.")
    p.add_argument("--url", default=url, help="broker URL (env VNETCTL_URL)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--host", default=host, help="host id (env VNETCTL_HOST)")
    target.add_argument("--all-hosts", action="store_true", help="broadcast; gather replies")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for replies")
    p.add_argument("--message-id", help="idempotency key (resend with the same one)")
    p.add_argument("--json", nargs="?", const="", default=None, metavar="ARGS",
                   help="print raw JSON; with a JSON object, use it as the op's args")
    p.add_argument("op", help="operation, e.g. bridge.ensure")
    p.add_argument("args", nargs="*", help="key=value arguments (values parsed as JSON)")
    return p


async def _run(ns: argparse.Namespace, args: dict[str, Any]) -> list[Reply]:
    async with VnetClient(ns.url) as client:
        if ns.all_hosts:
            return await client.broadcast(ns.op, args, timeout=min(ns.timeout, 10.0))
        return [await client.call(ns.host, ns.op, args, timeout=ns.timeout,
                                  message_id=ns.message_id)]


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    try:
        args = parse_args_list(ns.args)
        if ns.json:
            extra = json.loads(ns.json)
            if not isinstance(extra, dict):
                raise ValueError("--json ARGS must be a JSON object")
            args.update(extra)
    except (ValueError, OSError) as exc:
        print(f"vnetctl: {exc}", file=sys.stderr)
        return EX_USAGE
    try:
        replies = asyncio.run(_run(ns, args))
    except CallTimeout as exc:
        print(f"vnetctl: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except (OSError, ConnectionError) as exc:
        print(f"vnetctl: cannot reach the broker at {ns.url.split('@')[-1]}: {exc}",
              file=sys.stderr)
        return EX_UNAVAILABLE
    raw = ns.json is not None
    for reply in replies:
        print(render(ns.op, reply, raw=raw, with_host=ns.all_hosts))
    if ns.all_hosts and not replies:
        print("vnetctl: no host answered", file=sys.stderr)
        return EX_UNAVAILABLE
    return 0 if all(r.ok for r in replies) else EX_FAILED


if __name__ == "__main__":
    sys.exit(main())
