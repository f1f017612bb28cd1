"""`vnetctl`: send any op to one host or to all, and the day-to-day views.

    vnetctl --host hv1 bridge.ensure name=br0 mtu=1450
    vnetctl --host hv1 tap.ensure --json '{"name": "tap0", "bridge": "br0"}'
    vnetctl --all-hosts bridge.list          # broadcast; every host that answers in time
    vnetctl hosts                            # live hosts (broadcast host.health)
    vnetctl --host hv1 show                  # bridges, ports, TAPs and networks as a tree
    vnetctl --host hv1 apply jobs.jsonl      # many jobs from a file, with a progress bar
    vnetctl ops                              # every op and its arguments
    source <(vnetctl completion bash)        # shell completion

Output is a table (or a tree) by default, the replies' JSON with `--json`.
Exit status: 0 all ok, 1 a job failed, 64 bad usage, 69 no reply / no broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tomllib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.exceptions import AMQPConnectionError

from vnetd.cli import events as events_cli
from vnetd.cli import render as r
from vnetd.cli import segment as segment_cli
from vnetd.cli.render import render
from vnetd.client import CallTimeout, Reply, VnetClient
from vnetd.contract import commands as contract

EX_FAILED = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
DEFAULT_CONFIG = "/etc/vnetd/vnetd.toml"
BROADCAST_TIMEOUT = 3.0


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


def op_fields() -> dict[str, list[str]]:
    """Every op of the contract and the names of its arguments."""
    return {op: list(model.model_fields) for op, model in sorted(contract.OPS.items())}


def _parser() -> argparse.ArgumentParser:
    url, host = _config_defaults()
    p = argparse.ArgumentParser(
        prog="vnetctl", description="Send jobs to vnetd hosts.",
        epilog="commands: " + ", ".join(sorted(BUILTINS)) + "; or any op (vnetctl ops)")
    p.add_argument("--url", default=url, help="broker URL (env VNETCTL_URL)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--host", default=host, help="host id (env VNETCTL_HOST)")
    target.add_argument("--all-hosts", action="store_true",
                        help="broadcast to every host; gather the replies that arrive in time")
    p.add_argument("--timeout", type=float, default=None,
                   help=f"seconds to wait for replies (default 30; {BROADCAST_TIMEOUT:g} for "
                        "a broadcast, which always waits that long)")
    p.add_argument("--message-id", help="idempotency key (resend with the same one)")
    p.add_argument("--json", nargs="?", const="", default=None, metavar="ARGS",
                   help="print raw JSON; with a JSON object, use it as the op's args")
    p.add_argument("--concurrency", type=int, default=32, help="apply: jobs in flight at most")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="apply: progress bar on stderr (auto: when stderr is a terminal)")
    p.add_argument("--follow", action="store_true", help="events: keep printing new events")
    p.add_argument("op", metavar="COMMAND", help="an op (e.g. bridge.ensure) or a command")
    p.add_argument("args", nargs="*", help="key=value arguments (values parsed as JSON)")
    return p


def _timeout(ns: argparse.Namespace) -> float:
    if ns.timeout is not None:
        return float(ns.timeout)
    return BROADCAST_TIMEOUT if ns.all_hosts else 30.0


async def _ask(client: VnetClient, ns: argparse.Namespace, op: str,
               args: dict[str, Any] | None = None) -> list[Reply]:
    """One op to the chosen host, or to every host (all replies within the timeout)."""
    if ns.all_hosts:
        return await client.broadcast(op, args, timeout=_timeout(ns))
    return [await client.call(ns.host, op, args, timeout=_timeout(ns),
                              message_id=ns.message_id)]


# ------------------------------------------------------------------ commands
async def cmd_op(client: VnetClient, ns: argparse.Namespace) -> int:
    args = parse_args_list(ns.args)
    if ns.json:
        extra = json.loads(ns.json)
        if not isinstance(extra, dict):
            raise ValueError("--json ARGS must be a JSON object")
        args.update(extra)
    replies = await _ask(client, ns, ns.op, args)
    for reply in replies:
        print(render(ns.op, reply, raw=ns.json is not None, with_host=ns.all_hosts))
    return _status(ns, replies)


async def cmd_hosts(client: VnetClient, ns: argparse.Namespace) -> int:
    replies = await client.broadcast("host.health", {}, timeout=_timeout_broadcast(ns))
    if ns.json is not None:
        print(json.dumps([{"host_id": x.host_id, "ok": x.ok, "result": x.result,
                           "error": x.error} for x in replies], indent=2))
    elif replies:
        print(r.hosts(replies))
    if not replies:
        print("vnetctl: no host answered", file=sys.stderr)
        return EX_UNAVAILABLE
    return 0


def _timeout_broadcast(ns: argparse.Namespace) -> float:
    return float(ns.timeout) if ns.timeout is not None else BROADCAST_TIMEOUT


def _networks(reply: Reply | None) -> tuple[list[dict[str, Any]] | None, str | None]:
    if reply is None:
        return None, "no reply to network.list"
    if reply.ok:
        return list(reply.result.get("networks", [])), None
    err = reply.error or {}
    if err.get("code") == "invalid_argument" and "unknown op" in str(err.get("message")):
        return None, "this host does not serve network.list"
    return None, f"{err.get('code')}: {err.get('message')}"


async def cmd_show(client: VnetClient, ns: argparse.Namespace) -> int:
    link_replies, net_replies = await asyncio.gather(
        _ask(client, ns, "link.list", {}), _ask(client, ns, "network.list", {}))
    nets = {x.host_id: x for x in net_replies}
    out: list[dict[str, Any]] = []
    status = 0
    for reply in sorted(link_replies, key=lambda x: x.host_id or ""):
        host = reply.host_id or ns.host
        if not reply.ok:
            print(render("link.list", reply, raw=ns.json is not None, with_host=True))
            status = EX_FAILED
            continue
        networks, note = _networks(nets.get(reply.host_id) if ns.all_hosts
                                   else (net_replies[0] if net_replies else None))
        links = list(reply.result.get("links", []))
        if ns.json is not None:
            out.append({"host_id": host, "links": links, "networks": networks,
                        "networks_error": note})
        else:
            print(r.show_tree(host, links, networks, note))
    if ns.json is not None:
        print(json.dumps(out if ns.all_hosts else (out[0] if out else None), indent=2))
    if ns.all_hosts and not link_replies:
        print("vnetctl: no host answered", file=sys.stderr)
        return EX_UNAVAILABLE
    return status


def load_jobs(path: str) -> list[dict[str, Any]]:
    """Jobs from a file: a JSON array, or JSON lines; each {"op", "args"[, "message_id"]}."""
    with (sys.stdin if path == "-" else open(path, encoding="utf-8")) as f:
        text = f.read()
    stripped = text.lstrip()
    items = json.loads(text) if stripped.startswith("[") else [
        json.loads(line) for line in text.splitlines() if line.strip()]
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("op"), str):
            raise ValueError(  # noqa: TRY004 - bad file content is a usage error (exit 64)
                f"{path}: job {i + 1} is not an object with an \"op\"")
    return items


async def cmd_apply(client: VnetClient, ns: argparse.Namespace) -> int:
    jobs: list[dict[str, Any]] = ns.jobs
    progress = r.Progress(len(jobs), sys.stderr, enabled=ns.progress == "always" or (
        ns.progress == "auto" and sys.stderr.isatty()))
    sem = asyncio.Semaphore(max(1, ns.concurrency))
    timeout = _timeout(ns)

    async def one(job: dict[str, Any]) -> Reply:
        async with sem:
            try:
                reply = await client.call(ns.host, job["op"], job.get("args") or {},
                                          timeout=timeout,
                                          message_id=job.get("message_id") or str(uuid.uuid4()))
            except CallTimeout as exc:
                reply = Reply(ok=False, error={"code": "timeout", "message": str(exc)},
                              host_id=ns.host)
        progress.advance(reply.ok)
        return reply

    try:
        replies = await asyncio.gather(*(one(job) for job in jobs))
    finally:
        progress.close()
    failed = [(job, x) for job, x in zip(jobs, replies, strict=True) if not x.ok]
    if ns.json is not None:
        print(json.dumps([{"op": job["op"], "ok": x.ok, "result": x.result, "error": x.error}
                          for job, x in zip(jobs, replies, strict=True)], indent=2))
    else:
        for job, x in failed:
            err = x.error or {}
            print(f"{job['op']} {json.dumps(job.get('args') or {})}: {err.get('code')}: "
                  f"{err.get('message')}")
        print(f"{len(jobs) - len(failed)} ok, {len(failed)} failed, {len(jobs)} jobs")
    return EX_FAILED if failed else 0


def cmd_ops(ns: argparse.Namespace) -> int:
    fields = op_fields()
    if ns.json is not None:
        print(json.dumps(fields, indent=2))
    else:
        print(r.table([[op, " ".join(f"{k}=" for k in keys)] for op, keys in fields.items()],
                      ["op", "arguments"]))
    return 0


def cmd_completion(ns: argparse.Namespace) -> int:
    if ns.args not in ([], ["bash"]):
        raise ValueError("only bash completion is generated: vnetctl completion bash")
    from vnetd.cli.completion import bash_script
    print(bash_script(sorted(BUILTINS), op_fields()))
    return 0


Remote = Callable[[VnetClient, argparse.Namespace], Awaitable[int]]
Local = Callable[[argparse.Namespace], int]
BUILTINS: dict[str, Remote | None] = {
    "hosts": cmd_hosts, "show": cmd_show, "apply": cmd_apply, "ops": None, "completion": None}
"""Commands that are not ops. A remote one gets a connected client; None = local."""
LOCAL: dict[str, Local] = {"ops": cmd_ops, "completion": cmd_completion}


async def _remote(ns: argparse.Namespace, fn: Remote) -> int:
    async with VnetClient(ns.url) as client:
        return await fn(client, ns)


def _status(ns: argparse.Namespace, replies: list[Reply]) -> int:
    if ns.all_hosts and not replies:
        print("vnetctl: no host answered", file=sys.stderr)
        return EX_UNAVAILABLE
    return 0 if all(x.ok for x in replies) else EX_FAILED


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if events_cli.wants(argv):  # `vnetctl events ...`: its own options (vnetd/cli/events.py)
        return events_cli.main(argv, _config_defaults()[0])
    if segment_cli.wants(argv):  # `vnetctl segment ensure ...` (vnetd/cli/segment.py)
        return segment_cli.main(argv, _config_defaults()[0])
    ns = _parser().parse_args(argv)
    try:
        if ns.op in LOCAL:
            return LOCAL[ns.op](ns)
        fn = BUILTINS.get(ns.op) or cmd_op
        # Bad usage is reported before connecting.
        if fn is cmd_op:
            parse_args_list(ns.args)
        elif fn is cmd_apply:
            if len(ns.args) != 1 or ns.all_hosts:
                raise ValueError("usage: vnetctl --host HOST apply FILE (a JSON array or JSON "
                                 "lines of {\"op\": ..., \"args\": {...}}; - for stdin)")
            ns.jobs = load_jobs(ns.args[0])
        return asyncio.run(_remote(ns, fn))
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"vnetctl: {exc}", file=sys.stderr)
        return EX_USAGE
    except (OSError, AMQPConnectionError) as exc:
        print(f"vnetctl: cannot reach the broker at {ns.url.split('@')[-1]}: {exc}",
              file=sys.stderr)
        return EX_UNAVAILABLE
    except CallTimeout as exc:
        print(f"vnetctl: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
