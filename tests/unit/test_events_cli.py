"""`vnetctl events`: one line per event, gap lines, --type filter (routing: test_vnetctl)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest

from vnetd.cli import events as cli


def ce(seq: int, type_: str, subject: str | None, data: dict, epoch: str = "e1") -> dict:
    return {"specversion": "1.0", "id": f"{epoch}-{seq}", "source": "vnetd://hv1",
            "type": f"io.vnetd.{type_}", "time": "2024-06-10T14:33:20.123456Z",
            "sequence": seq, "epoch": epoch, "subject": subject, "data": data}


def test_lines() -> None:
    changed = ce(9, "link.changed", "tap0", {"changes": ["mtu", "master"],
                                              "previous": {"mtu": 1500, "master": None},
                                              "mtu": 1400, "master": "br0"})
    assert cli.line(changed) == ("2024-06-10T14:33:20.123456Z hv1 #9 link.changed tap0 "
                                 'mtu 1500->1400 master null->"br0"')
    added = ce(3, "link.added", "tap0", {"kind": "tap", "state": "down", "mtu": 1500,
                                         "master": None, "owned": True})
    assert cli.line(added).endswith("link.added tap0 tap down mtu 1500 owned")
    resync = ce(5, "host.resync", None, {"reason": "buffer_overflow",
                                         "lost": {"first": 1, "last": 5, "count": 5}})
    assert "buffer_overflow changes=- lost 1..5 (5)" in cli.line(resync)
    failed = ce(6, "command.failed", "eth0", {"op": "tap.delete", "duration_ms": 1.5,
                                              "error": {"code": "forbidden", "message": "no"}})
    assert cli.line(failed).endswith("command.failed eth0 tap.delete 1.5 ms forbidden: no")


@dataclass
class Msg:
    body: bytes


async def test_printer_filters_and_reports_gaps(capsys: pytest.CaptureFixture[str]) -> None:
    ns = cli.parser("amqp://x", None).parse_args(["events", "--type", "link.*", "--count", "2"])
    done = asyncio.Event()
    p = cli.Printer(ns, done)
    await p.on_message(Msg(json.dumps(ce(1, "host.started", None, {})).encode()))  # type: ignore[arg-type]
    await p.on_message(Msg(json.dumps(ce(2, "link.added", "a", {})).encode()))  # type: ignore[arg-type]
    await p.on_message(Msg(json.dumps(ce(5, "link.removed", "a", {})).encode()))  # type: ignore[arg-type]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert "link.added a" in out[0]
    assert out[1].startswith("GAP hv1 sequences 3..4")
    assert "link.removed a" in out[2]
    assert done.is_set()
