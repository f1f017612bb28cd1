"""`vnetctl`: send any op to one host or to all, and the day-to-day views.

    vnetctl --host hv1 bridge.ensure name=br0 mtu=1450
    vnetctl tap.ensure '{"name": "tap0", "bridge": "br0"}'   # args as one JSON object
    vnetctl --json tap.delete name=tap0          # the reply as JSON (-o yaml: as YAML)
    vnetctl --all-hosts bridge.list              # broadcast; every host that answers in time
    vnetctl hosts                                # live hosts (broadcast host.health)
    vnetctl show                                 # bridges, ports, TAPs and networks as a tree
    vnetctl show --format svg > host.svg         # the same as a picture (Graphviz)
    vnetctl apply jobs.jsonl                     # many jobs from a file, with a progress bar
    vnetctl events --follow                      # events as they happen
    vnetctl ops                                  # every op and its arguments
    source <(vnetctl completion bash)            # shell completion

Every op is a subcommand with its own `--help`. Common options may come before
or after the command. The config file (broker URL, host id) is found like
`vnetd`'s: --config, $VNETD_CONFIG, the checkout's config/vnetd.toml, then
/etc/vnetd/vnetd.toml.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import logging
import os
import re
import socket
import sys
import tomllib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import structlog
from aio_pika.exceptions import AMQPConnectionError

from vnetd import __version__
from vnetd.cli import events as events_cli
from vnetd.cli import exits, ophelp
from vnetd.cli import picture as picture_cli
from vnetd.cli import render as r
from vnetd.cli import segment as segment_cli
from vnetd.cli.exits import EX_FAILED, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE
from vnetd.cli.render import render
from vnetd.client import CallTimeout, Reply, VnetClient
from vnetd.config.locate import ENV_VAR, find_config
from vnetd.contract import commands as contract

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
BROADCAST_TIMEOUT = 3.0
OUTPUTS = ("table", "json", "yaml")


class ConfigUnreadable(Exception):
    """The config file named explicitly (--config, VNETD_CONFIG) cannot be read: exit 78."""


# ------------------------------------------------------------------ arguments
def suggest(word: str, choices: Sequence[str]) -> str:
    """' (did you mean X?)' for a near miss, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


class Parser(argparse.ArgumentParser):
    """argparse with sysexits' 64 for usage errors and "did you mean" for choices."""

    def error(self, message: str) -> NoReturn:
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'([^']*)'", m.group(2))
            what = "command" if self.prog == "vnetctl" else "value"
            message = f"unknown {what} {m.group(1)!r}{suggest(m.group(1), choices)}"
            if what == "command":
                message += "; `vnetctl --help` lists the commands, `vnetctl ops` the ops"
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


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
    """key=value items, or a whole JSON object as one item."""
    args: dict[str, Any] = {}
    for item in items:
        if item.lstrip().startswith("{"):
            obj = json.loads(item)
            if not isinstance(obj, dict):
                raise ValueError(f"argument {item!r} is not a JSON object")
            args.update(obj)
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"argument {item!r} is not key=value")
        args[key] = parse_value(value)
    return args


def check_fields(op: str, args: dict[str, Any]) -> None:
    """Unknown argument names are a usage error, caught before anything is sent."""
    fields = list(contract.OPS[op].model_fields)
    for key in args:
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise ValueError(f"{op} has no argument {key!r}{suggest(key, fields)}; "
                             f"its arguments: {known}")


def op_fields() -> dict[str, list[str]]:
    """Every op of the contract and the names of its arguments."""
    return {op: list(model.model_fields) for op, model in sorted(contract.OPS.items())}


def _common(p: argparse.ArgumentParser, *, top: bool) -> None:
    """Options accepted before and after the command. Under a subcommand they default
    to SUPPRESS, so a value given before the command is not reset by the subparser."""
    def d(value: Any) -> Any:
        return value if top else argparse.SUPPRESS
    g = p.add_argument_group("common options")
    g.add_argument("--config", default=d(None),
                   help=f"config file (default: ${ENV_VAR}, the checkout's config/vnetd.toml, "
                        "/etc/vnetd/vnetd.toml): its [amqp] url and host_id")
    g.add_argument("--url", default=d(None), action="append",
                   help="broker URL; several (a cluster's nodes): repeat --url or separate "
                        "them with commas (env VNETCTL_URL; default: the config's [amqp] "
                        "urls, else url)")
    target = g.add_mutually_exclusive_group()
    target.add_argument("--host", default=d(None),
                        help="host id (env VNETCTL_HOST; default: the config's host_id, "
                             "else this machine's hostname)")
    target.add_argument("--all-hosts", action="store_true", default=d(False),
                        help="broadcast to every host; gather the replies that arrive in time")
    g.add_argument("--timeout", type=float, default=d(None),
                   help=f"seconds to wait for replies (default 30; {BROADCAST_TIMEOUT:g} for "
                        "a broadcast, which always waits that long)")
    g.add_argument("--message-id", default=d(None),
                   help="idempotency key (resend with the same one)")
    g.add_argument("-o", "--output", choices=OUTPUTS, default=d("table"),
                   help="table (default), json or yaml")
    g.add_argument("--json", dest="output", action="store_const", const="json",
                   default=argparse.SUPPRESS, help="the same as --output json")


Remote = Callable[[VnetClient, argparse.Namespace], Awaitable[int]]
Local = Callable[[argparse.Namespace], int]


def build_parser() -> Parser:
    p = Parser(prog="vnetctl", description="Send jobs to vnetd hosts and show what they hold.",
               epilog=exits.HELP + "\n\nvnetctl COMMAND --help shows a command's own options.",
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"vnetctl {__version__}")
    _common(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def add(name: str, help_: str, **kw: Any) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=kw.pop("description", help_),
                           formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
        _common(c, top=False)
        return c

    c = add("hosts", "every live host (broadcast host.health)")
    c.set_defaults(remote=cmd_hosts)
    c = add("show", "bridges, ports, TAPs and libvirt networks of a host",
            description="A host's bridges, ports, TAPs and libvirt networks: a tree, or a "
                        "picture (--format dot, or svg/png through Graphviz's `dot`).")
    picture_cli.add_arguments(c)
    c.set_defaults(remote=cmd_show)
    c = add("apply", "many jobs from a file (JSON array or JSON lines), with a progress bar")
    c.add_argument("file", help='jobs: [{"op": ..., "args": {...}}, ...] or one per line; '
                                "- for stdin")
    c.add_argument("--concurrency", type=int, default=32, help="jobs in flight at most")
    c.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bar on stderr (auto: when stderr is a terminal)")
    c.set_defaults(remote=cmd_apply, prepare=_prepare_apply)
    c = add("ops", "every op and its arguments")
    c.set_defaults(local=cmd_ops, offline=True)
    c = add("completion", "print the bash completion script (source <(vnetctl completion bash))")
    c.add_argument("shell", nargs="?", default="bash", choices=("bash",))
    c.set_defaults(local=cmd_completion, offline=True)
    c = add("call", "send an op this vnetctl does not know (no local checks)")
    c.add_argument("op", help="the op's name")
    c.add_argument("args", nargs="*", metavar="key=value", help="its arguments")
    c.set_defaults(remote=cmd_op, prepare=_prepare_call)
    c = add("events", "print events as they happen", description=events_cli.__doc__)
    events_cli.add_arguments(c)
    c.set_defaults(local=_events)
    for register in EXTENSIONS:
        register(sub, lambda c: _common(c, top=False))
    for op in sorted(contract.OPS):
        c = add(op, ophelp.summary(op), epilog=ophelp.epilog(op))
        c.add_argument("args", nargs="*", metavar="key=value",
                       help="the op's arguments (listed below), or one JSON object")
        c.set_defaults(remote=cmd_op, op=op, prepare=_prepare_op)
    return p


Register = Callable[[Any, Callable[[argparse.ArgumentParser], None]], None]
EXTENSIONS: list[Register] = [segment_cli.register]
"""Extra subcommands from other modules (e.g. cli/segment.py): each gets the subparsers
and a function adding the common options to its parser, and sets `remote=` (an async
function of a connected client and the namespace) or `local=` (a function of the namespace,
with --url already resolved) on it. Append here."""


# ------------------------------------------------------------------ config
def _read_config(flag: str | None) -> dict[str, Any]:
    path = find_config(flag)
    if path is None:
        return {}
    explicit = bool(flag or os.environ.get(ENV_VAR))
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        if explicit:
            raise ConfigUnreadable(f"cannot read config {path}: {exc}") from exc
        return {}  # e.g. /etc/vnetd/vnetd.toml readable by group vnetd only: use defaults


def resolve_target(ns: argparse.Namespace, *, host: bool = True) -> None:
    """Fill --url and --host: flag, then VNETCTL_URL/VNETCTL_HOST, then the config file.
    Without `host` (events: no --host means every host) only the URL is filled."""
    if isinstance(ns.url, list):  # --url given, maybe several times: one string
        ns.url = ",".join(ns.url)
    if ns.url and (ns.host or not host):
        return
    data = _read_config(ns.config) if not (
        os.environ.get("VNETCTL_URL") and os.environ.get("VNETCTL_HOST")) else {}
    amqp = data.get("amqp", {})
    ns.url = ns.url or os.environ.get("VNETCTL_URL") or ",".join(amqp.get("urls") or []) \
        or amqp.get("url", DEFAULT_URL)
    ns.default_host = (os.environ.get("VNETCTL_HOST") or data.get("host_id")
                       or socket.gethostname())
    if host and ns.host is None and not ns.all_hosts:
        ns.host = ns.default_host


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
def _prepare_op(ns: argparse.Namespace) -> None:
    ns.op_args = parse_args_list(ns.args)
    check_fields(ns.op, ns.op_args)


def _prepare_call(ns: argparse.Namespace) -> None:
    ns.op_args = parse_args_list(ns.args)


async def cmd_op(client: VnetClient, ns: argparse.Namespace) -> int:
    replies = await _ask(client, ns, ns.op, ns.op_args)
    for reply in replies:
        print(render(ns.op, reply, output=ns.output, with_host=ns.all_hosts))
    return _status(ns, replies)


async def cmd_hosts(client: VnetClient, ns: argparse.Namespace) -> int:
    timeout = float(ns.timeout) if ns.timeout is not None else BROADCAST_TIMEOUT
    replies = await client.broadcast("host.health", {}, timeout=timeout)
    if ns.output != "table":
        print(r.dump([{"host_id": x.host_id, "ok": x.ok, "result": x.result,
                       "error": x.error} for x in replies], ns.output))
    elif replies:
        print(r.hosts(replies))
    if not replies:
        print("vnetctl: no host answered", file=sys.stderr)
        return EX_UNAVAILABLE
    return 0


def _networks(reply: Reply | None) -> tuple[list[dict[str, Any]] | None, str | None]:
    if reply is None:
        return None, "no reply to network.list"
    if reply.ok:
        return list(reply.result.get("networks", [])), None
    err = reply.error or {}
    if err.get("code") == "invalid_argument" and "unknown op" in str(err.get("message")):
        return None, "this host does not serve network.list"
    return None, f"{err.get('code')}: {err.get('message')}"


def _ovs(reply: Reply | None) -> list[dict[str, Any]] | None:
    """The host's OVS bridges, or None when it manages no Open vSwitch (or did not say)."""
    if reply is None or not reply.ok:
        return None
    return list(reply.result.get("bridges", []))


async def cmd_show(client: VnetClient, ns: argparse.Namespace) -> int:
    link_replies, net_replies, ovs_replies = await asyncio.gather(
        _ask(client, ns, "link.list", {}), _ask(client, ns, "network.list", {}),
        _ask(client, ns, "ovs.bridge.list", {}))
    nets = {x.host_id: x for x in net_replies}
    ovs_of = {x.host_id: x for x in ovs_replies}
    hosts: list[dict[str, Any]] = []
    status = 0
    for reply in sorted(link_replies, key=lambda x: x.host_id or ""):
        host = reply.host_id or ns.host
        if not reply.ok:
            print(render("link.list", reply, output=ns.output, with_host=True))
            status = exits.for_error(reply.error_code)
            continue
        networks, note = _networks(nets.get(reply.host_id) if ns.all_hosts
                                   else (net_replies[0] if net_replies else None))
        ovs = _ovs(ovs_of.get(reply.host_id) if ns.all_hosts
                   else (ovs_replies[0] if ovs_replies else None))
        hosts.append({"host_id": host, "links": list(reply.result.get("links", [])),
                      "networks": networks, "networks_error": note, "ovs": ovs})
    if ns.all_hosts and not link_replies:
        print("vnetctl: no host answered", file=sys.stderr)
        return EX_UNAVAILABLE
    if ns.format != "tree":
        sys.stdout.write(picture_cli.draw(hosts, ns.format))
    elif ns.output != "table":
        print(r.dump(hosts if ns.all_hosts else (hosts[0] if hosts else None), ns.output))
    else:
        for h in hosts:
            print(r.show_tree(h["host_id"], h["links"], h["networks"], h["networks_error"],
                              h["ovs"]))
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


def _prepare_apply(ns: argparse.Namespace) -> None:
    if ns.all_hosts:
        raise ValueError("apply sends to one host: use --host HOST, not --all-hosts")
    ns.jobs = load_jobs(ns.file)


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
    if ns.output != "table":
        print(r.dump([{"op": job["op"], "ok": x.ok, "result": x.result, "error": x.error}
                      for job, x in zip(jobs, replies, strict=True)], ns.output))
    else:
        for job, x in failed:
            err = x.error or {}
            print(f"{job['op']} {json.dumps(job.get('args') or {})}: {err.get('code')}: "
                  f"{err.get('message')}")
        print(f"{len(jobs) - len(failed)} ok, {len(failed)} failed, {len(jobs)} jobs")
    return EX_FAILED if failed else 0


def cmd_ops(ns: argparse.Namespace) -> int:
    fields = op_fields()
    if ns.output != "table":
        print(r.dump(fields, ns.output))
    else:
        print(r.table([[op, " ".join(f"{k}=" for k in keys)] for op, keys in fields.items()],
                      ["op", "arguments"]))
    return 0


def cmd_completion(ns: argparse.Namespace) -> int:
    from vnetd.cli.completion import bash_script
    print(bash_script(build_parser(), op_fields()))
    return 0


def _events(ns: argparse.Namespace) -> int:
    return events_cli.run_main(ns)


async def _remote(ns: argparse.Namespace, fn: Remote) -> int:
    async with VnetClient(ns.url) as client:
        return await fn(client, ns)


def _status(ns: argparse.Namespace, replies: list[Reply]) -> int:
    if ns.all_hosts and not replies:
        print("vnetctl: no host answered", file=sys.stderr)
        return EX_UNAVAILABLE
    return exits.worst(0 if x.ok else exits.for_error(x.error_code) for x in replies)


def _quiet_library_logs() -> None:
    """stdout carries only the command's output (JSON, tables, DOT): the library's own
    structured logs (a broker connect, a reconnect) go to stderr, warnings and worse."""
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def main(argv: list[str] | None = None) -> int:
    _quiet_library_logs()
    parser = build_parser()
    try:
        ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (64)
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    if ns.command is None:
        parser.print_help(sys.stderr)
        return EX_USAGE
    try:
        if not getattr(ns, "offline", False):
            resolve_target(ns, host=ns.command != "events")
        if getattr(ns, "local", None) is not None:
            return int(ns.local(ns))
        if getattr(ns, "prepare", None) is not None:
            ns.prepare(ns)  # bad usage is reported before connecting
        return asyncio.run(_remote(ns, ns.remote))
    except ConfigUnreadable as exc:
        print(f"vnetctl: {exc}", file=sys.stderr)
        return exits.EX_CONFIG
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"vnetctl: {exc}", file=sys.stderr)
        return EX_USAGE
    except picture_cli.GraphvizMissing as exc:
        print(f"vnetctl: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except (OSError, AMQPConnectionError) as exc:
        print(f"vnetctl: cannot reach the broker at {ns.url.split('@')[-1]}: {exc}",
              file=sys.stderr)
        return EX_UNAVAILABLE
    except CallTimeout as exc:
        print(f"vnetctl: {exc} (the job may still run: resend it with the same "
              "--message-id)", file=sys.stderr)
        return EX_TEMPFAIL


if __name__ == "__main__":
    sys.exit(main())
