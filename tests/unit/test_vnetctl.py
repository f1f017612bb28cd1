"""vnetctl: key=value arguments and human output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vnetd.cli.render import render
from vnetd.cli.vnetctl import parse_args_list, parse_value
from vnetd.client import Reply


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1450", 1450),
        ("br0", "br0"),
        ("false", False),
        ("true", True),
        ("null", None),
        ("2.5", 2.5),
        ('["a", "b"]', ["a", "b"]),
        ('{"x": 1}', {"x": 1}),
        ("52:54:00:12:34:56", "52:54:00:12:34:56"),
        ("", ""),
        ('"1500"', "1500"),
    ],
)
def test_parse_value(text: str, value: Any) -> None:
    parsed = parse_value(text)
    assert parsed == value
    assert type(parsed) is type(value)


def test_parse_value_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "cmds.json"
    path.write_text(json.dumps([{"op": "bridge.list"}]))
    assert parse_value(f"@{path}") == [{"op": "bridge.list"}]


def test_parse_args_list() -> None:
    assert parse_args_list(["name=br0", "mtu=1450", "up=false", "mac=02:00:00:00:00:01",
                            "x=a=b"]) == {
        "name": "br0", "mtu": 1450, "up": False, "mac": "02:00:00:00:00:01", "x": "a=b"}
    assert parse_args_list([]) == {}


@pytest.mark.parametrize("item", ["mtu", "=1450", ""])
def test_parse_args_list_refuses_items_without_key_value(item: str) -> None:
    with pytest.raises(ValueError, match="not key=value"):
        parse_args_list(["name=br0", item])


def bridge(name: str, ports: list[str], *, stp: bool = False, owned: bool = True,
           state: str = "up") -> dict[str, Any]:
    return {"name": name, "state": state, "owned": owned, "ports": ports,
            "bridge": {"stp": stp, "forward_delay": 15.0, "ageing_time": 300.0,
                       "vlan_filtering": False}}


def test_bridge_list_looks_like_brctl_show() -> None:
    reply = Reply(ok=True, result={"bridges": [bridge("br0", ["tap0", "tap1"], stp=True),
                                               bridge("virbr0", [], owned=False,
                                                      state="down")]})
    lines = render("bridge.list", reply, raw=False, with_host=False).splitlines()
    assert lines[0].split() == ["bridge", "name", "state", "STP", "enabled", "owned",
                                "interfaces"]
    assert lines[1].split() == ["br0", "up", "yes", "yes", "tap0"]
    assert lines[2].split() == ["tap1"]
    # The second port sits in the interfaces column, under the first one.
    assert lines[2].index("tap1") == lines[1].index("tap0") == lines[0].index("interfaces")
    assert lines[3].split() == ["virbr0", "down", "no", "no"]
    assert len(lines) == 4


def test_link_list_table() -> None:
    reply = Reply(ok=True, result={"links": [
        {"name": "tap0", "kind": "tap", "state": "up", "mtu": 1500,
         "mac": "52:54:00:00:00:01", "master": "br0", "owned": True}]})
    lines = render("link.list", reply, raw=False, with_host=False).splitlines()
    assert lines[1].split() == ["tap0", "tap", "up", "1500", "52:54:00:00:00:01", "br0", "yes"]


def test_error_reply() -> None:
    reply = Reply(ok=False, error={"code": "forbidden", "message": "virbr0 is not ours",
                                   "details": {}}, host_id="hv1")
    assert render("bridge.ensure", reply, raw=False, with_host=False) == (
        "error: forbidden: virbr0 is not ours")
    assert render("bridge.ensure", reply, raw=False, with_host=True) == (
        "[hv1] error: forbidden: virbr0 is not ours")


def test_other_ops_print_key_value_lines() -> None:
    reply = Reply(ok=True, result={"name": "br0", "deleted": True, "detached_ports": ["t0"]})
    assert render("bridge.delete", reply, raw=False, with_host=False).splitlines() == [
        "name: br0", "deleted: True", 'detached_ports: ["t0"]']


def test_raw_output_is_the_reply_json() -> None:
    reply = Reply(ok=True, result={"bridges": []}, host_id="hv2")
    assert json.loads(render("bridge.list", reply, raw=True, with_host=True)) == {
        "ok": True, "result": {"bridges": []}, "host_id": "hv2"}
    err = Reply(ok=False, error={"code": "internal", "message": "x", "details": {}})
    assert json.loads(render("host.health", err, raw=True, with_host=False)) == {
        "ok": False, "error": {"code": "internal", "message": "x", "details": {}}}
