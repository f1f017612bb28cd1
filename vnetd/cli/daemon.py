"""`vnetd`: run the daemon, or check a config file."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from vnetd import __version__
from vnetd.config import ConfigError, Settings, load_settings

EX_OK = 0
EX_CONFIG = 78  # sysexits.h: configuration error
DEFAULT_CONFIG = "/etc/vnetd/vnetd.toml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vnetd", description="vnetd host network agent")
    parser.add_argument("--version", action="version", version=f"vnetd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config file")
    check = sub.add_parser("check-config", help="validate a config and print the effective one")
    check.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config file")
    return parser


def _load(path: str) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"vnetd: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from exc


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = _load(args.config)
    if args.command == "check-config":
        print(json.dumps(settings.public_dict(), indent=2))
        return EX_OK
    from vnetd.service.daemon import Daemon
    from vnetd.service.logging import setup_logging
    setup_logging(settings.log)
    asyncio.run(Daemon(settings).run())
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
