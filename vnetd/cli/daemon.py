"""`vnetd`: run the daemon, or check a config file."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from vnetd import __version__
from vnetd.config import ConfigError, Settings, find_config, load_settings
from vnetd.config.locate import SYSTEM_CONFIG

EX_OK = 0
EX_CONFIG = 78  # sysexits.h: configuration error
CONFIG_HELP = ("TOML config file (default: $VNETD_CONFIG, else the checkout's "
               "config/vnetd.toml, else /etc/vnetd/vnetd.toml)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vnetd", description="vnetd host network agent")
    parser.add_argument("--version", action="version", version=f"vnetd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", default=None, help=CONFIG_HELP)
    check = sub.add_parser("check-config", help="validate a config and print the effective one")
    check.add_argument("--config", default=None, help=CONFIG_HELP)
    clean = sub.add_parser(
        "cleanup", help="remove vnetd's orphaned devices now (asks the running daemon, "
        "or sweeps locally when none answers)")
    clean.add_argument("--config", default=None, help=CONFIG_HELP)
    clean.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    clean.add_argument("--local", action="store_true", help="sweep here, do not ask the daemon")
    clean.add_argument("--json", action="store_true", help="print the result as JSON")
    perms = sub.add_parser(
        "broker-permissions", help="print the RabbitMQ users and permissions of a fleet "
        "(least privilege per host): rabbitmqctl lines or a definitions file")
    perms.add_argument("--hosts", required=True, help="host ids, comma-separated")
    perms.add_argument("--control-user", action="append", default=[],
                       help="a control-plane user (may send commands); repeatable")
    perms.add_argument("--subscriber-user", action="append", default=[],
                       help="a read-only event subscriber; repeatable")
    perms.add_argument("--vhost", default="/")
    perms.add_argument("--format", choices=("rabbitmqctl", "definitions"),
                       default="rabbitmqctl")
    perms.add_argument("--passwords", default=None,
                       help="JSON file {user: password}; missing ones are generated "
                            "(printed on stderr for the definitions format)")
    return parser


def _broker_permissions(args: argparse.Namespace) -> int:
    import secrets
    from pathlib import Path

    from vnetd.amqp import permissions as p
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    gs = p.grants(hosts, args.control_user, args.subscriber_user)
    given: dict[str, str] = json.loads(Path(args.passwords).read_text()) if args.passwords \
        else {}
    passwords = {g.user: given.get(g.user) or secrets.token_urlsafe(18) for g in gs}
    if args.format == "definitions":
        print(json.dumps(p.definitions(gs, passwords, args.vhost), indent=2))
        for user in (u for u in passwords if u not in given):
            print(f"{user} {passwords[user]}", file=sys.stderr)
    else:
        print("\n".join(p.rabbitmqctl_lines(gs, passwords, args.vhost)))
    return EX_OK


def _load(flag: str | None) -> Settings:
    # The same search as vnetctl's (vnetd/config/locate.py); with no file anywhere the
    # error names the system path, where an installed host keeps it.
    path = find_config(flag) or SYSTEM_CONFIG
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"vnetd: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from exc


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "broker-permissions":
        return _broker_permissions(args)
    settings = _load(args.config)
    if args.command == "check-config":
        print(json.dumps(settings.public_dict(), indent=2))
        return EX_OK
    if args.command == "cleanup":
        return _cleanup(settings, args)
    from vnetd.amqp.tls import BrokerTlsError
    from vnetd.service.daemon import Daemon
    from vnetd.service.logging import setup_logging
    setup_logging(settings.log)
    try:
        asyncio.run(Daemon(settings).run())
    except BrokerTlsError as exc:  # retrying cannot fix it: a configuration error
        print(f"vnetd: {exc}", file=sys.stderr)
        return EX_CONFIG
    return EX_OK


def _cleanup(settings: Settings, args: argparse.Namespace) -> int:
    from vnetd.service.cleanup import CleanupFailed, cleanup_once, describe
    from vnetd.service.logging import setup_logging
    setup_logging(settings.log)
    try:
        where, result = asyncio.run(cleanup_once(settings, args.dry_run, local=args.local))
    except CleanupFailed as exc:
        print(f"vnetd cleanup: the daemon refused: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"ran": where, **result}, indent=2) if args.json
          else describe(where, result))
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
