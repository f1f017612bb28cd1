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


def test_parse_args_list_takes_a_json_object() -> None:
    assert parse_args_list(['{"name": "tap0", "bridge": "br0"}', "mtu=1400"]) == {
        "name": "tap0", "bridge": "br0", "mtu": 1400}
    with pytest.raises(ValueError, match="Expecting"):  # a usage error (64), not a crash
        parse_args_list(['{"name": "tap0"'])


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
    # `ip -br link` columns first: name, state, MAC; then kind, MTU, master, owned.
    assert lines[0].split() == ["name", "state", "mac", "kind", "mtu", "master", "owned"]
    assert lines[1].split() == ["tap0", "UP", "52:54:00:00:00:01", "tap", "1500", "br0", "yes"]


def test_network_list_looks_like_virsh_net_list_all() -> None:
    reply = Reply(ok=True, result={"networks": [
        {"name": "default", "active": True, "autostart": True, "persistent": True,
         "bridge": "virbr0", "kind": "nat", "owned": False},
        {"name": "vn-iso", "active": False, "autostart": False, "persistent": True,
         "bridge": None, "kind": "isolated", "owned": True}]})
    lines = render("network.list", reply, raw=False, with_host=False).splitlines()
    assert lines[0].split() == ["name", "state", "autostart", "persistent", "bridge", "kind",
                                "owned"]
    assert lines[1].split() == ["default", "active", "yes", "yes", "virbr0", "nat", "no"]
    assert lines[2].split() == ["vn-iso", "inactive", "no", "yes", "isolated", "yes"]


def test_health_says_why_a_component_is_degraded() -> None:
    reply = Reply(ok=True, result={
        "host_id": "hv1", "version": "0.1.0", "status": "degraded",
        "kernel": {"bridge": True, "tun_device": True},
        "components": {"broker": "connected", "libvirt": "degraded"},
        "details": {"libvirt": {"state": "degraded", "since": "2026-12-01T22:00:00Z",
                                "last_error": "Failed to connect socket"}},
        "reasons": ["libvirt degraded since 2026-12-01T22:00:00Z: Failed to connect socket"]})
    text = render("host.health", reply)
    assert "status: degraded" in text
    row = next(line for line in text.splitlines() if line.startswith("libvirt "))
    assert row.split()[:3] == ["libvirt", "degraded", "2026-12-01T22:00:00Z"]
    assert row.endswith("Failed to connect socket")
    assert "degraded: libvirt degraded since 2026-12-01T22:00:00Z: Failed to connect socket" \
        in text.splitlines()


def test_yaml_output_is_the_same_document_as_json() -> None:
    import yaml
    reply = Reply(ok=True, result={"bridges": [bridge("br0", ["tap0"])]}, host_id="hv1")
    as_json = json.loads(render("bridge.list", reply, output="json", with_host=True))
    assert yaml.safe_load(render("bridge.list", reply, output="yaml", with_host=True)) == as_json


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


# ------------------------------------------------------------------ the command line
from vnetd.cli import exits, vnetctl  # noqa: E402


def parse(*argv: str) -> Any:
    return vnetctl.build_parser().parse_args(list(argv))


def test_json_is_a_flag_and_never_takes_the_op() -> None:
    ns = parse("--json", "tap.delete", "name=tap-demo0")
    assert (ns.command, ns.op, ns.output, ns.args) == (
        "tap.delete", "tap.delete", "json", ["name=tap-demo0"])
    assert parse("--json", "host.health").command == "host.health"
    assert parse("-o", "yaml", "bridge.list").output == "yaml"
    assert parse("bridge.list").output == "table"


def test_common_options_go_before_or_after_the_command() -> None:
    before = parse("--host", "hv1", "--timeout", "2", "--json", "tap.ensure", "name=t0")
    after = parse("tap.ensure", "name=t0", "--host", "hv1", "--timeout", "2", "--json")
    for ns in (before, after):
        assert (ns.host, ns.timeout, ns.output, ns.args) == ("hv1", 2.0, "json", ["name=t0"])
    # a value given before the command is not reset by the subcommand's defaults
    assert parse("--all-hosts", "bridge.list").all_hosts is True


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    from vnetd import __version__
    assert vnetctl.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"vnetctl {__version__}"
    assert vnetctl.main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("    ")}
    assert {"events", "show", "hosts", "apply", "ops", "completion", "call", "segment"} <= listed
    assert set(OPS_FOR_HELP()) <= listed
    assert "exit status:" in out and "77  forbidden" in out
    assert vnetctl.main(["tap.ensure", "--help"]) == 0
    sub = capsys.readouterr().out
    assert "  bridge=  string, default null" in sub and "ip tuntap add" in sub


def OPS_FOR_HELP() -> list[str]:
    return list(vnetctl.op_fields())


def test_did_you_mean_for_ops_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert vnetctl.main(["tap.ensre", "name=t0"]) == exits.EX_USAGE
    assert "unknown command 'tap.ensre' (did you mean tap.ensure" in capsys.readouterr().err
    url = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens: the check comes first
    assert vnetctl.main(["--url", url, "--host", "h", "tap.ensure", "name=t0",
                         "brige=br0"]) == exits.EX_USAGE
    assert "tap.ensure has no argument 'brige' (did you mean bridge?)" in \
        capsys.readouterr().err
    assert vnetctl.main(["show", "--format", "sgv"]) == exits.EX_USAGE
    assert "(did you mean svg?)" in capsys.readouterr().err


@pytest.mark.parametrize(("code", "status"), [
    ("invalid_argument", 65), ("forbidden", 77), ("unavailable", 69), ("unsupported", 69),
    ("internal", 70), ("not_found", 1), ("conflict", 1)])
def test_exit_status_follows_the_error_code(code: str, status: int) -> None:
    ns = parse("--host", "h", "tap.delete", "name=x")
    replies = [Reply(ok=False, error={"code": code, "message": "m"})]
    assert vnetctl._status(ns, replies) == status
    assert vnetctl._status(ns, [Reply(ok=True)]) == 0


def test_extra_subcommands_register_through_extensions(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    def register(sub: Any, common: Any) -> None:
        p = sub.add_parser("segment", help="an extra command")
        common(p)
        p.set_defaults(local=lambda ns: print(f"segment via {ns.output}") or 0)

    monkeypatch.setattr(vnetctl, "EXTENSIONS", [register])
    assert vnetctl.main(["segment", "--json"]) == 0
    assert capsys.readouterr().out.strip() == "segment via json"


def test_segment_is_a_subcommand_with_the_common_options(
        capsys: pytest.CaptureFixture[str]) -> None:
    url = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens
    ns = parse("--url", url, "segment", "ensure", "--vni", "100", "--bridge", "br-a",
               "--vxlan", "vx-a", "hv1=198.51.100.1", "hv2=198.51.100.2", "--json")
    assert (ns.command, ns.vni, ns.hosts, ns.output) == (
        "segment", 100, ["hv1=198.51.100.1", "hv2=198.51.100.2"], "json")
    assert vnetctl.main(["--url", url, "segment", "ensure", "--vni", "0", "--bridge", "b",
                         "--vxlan", "v", "hv1=198.51.100.1"]) == exits.EX_USAGE
    assert "--vni must be" in capsys.readouterr().err
    assert vnetctl.main(["--url", url, "segment", "ensure", "--vni", "7", "--bridge", "b",
                         "--vxlan", "v", "hv1=198.51.100.1"]) == exits.EX_UNAVAILABLE
