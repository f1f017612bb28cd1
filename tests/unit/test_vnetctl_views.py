"""vnetctl's views (hosts, show tree, progress), `ops`, and the generated bash completion."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vnetd.cli import render as r
from vnetd.cli import vnetctl
from vnetd.cli.completion import bash_script
from vnetd.client import Reply
from vnetd.contract.commands import OPS


def link(name: str, kind: str, master: str | None = None, owned: bool = True) -> dict[str, Any]:
    return {"name": name, "kind": kind, "state": "up", "mtu": 1500, "mac": None,
            "master": master, "owned": owned}


def test_show_tree_like_brctl_show_plus_net_list() -> None:
    links = [link("lo", "loopback", owned=False), link("br0", "bridge"),
             link("tap1", "tap", "br0"), link("tap0", "tap", "br0"), link("br1", "bridge"),
             link("loose", "tap"), link("veth0", "veth", owned=False)]
    nets = [{"name": "default", "active": False, "autostart": True, "persistent": True,
             "bridge": "virbr0", "owned": False}]
    lines = r.show_tree("hv1", links, nets).splitlines()
    assert lines[:6] == [
        "hv1",
        "├── br0  bridge  up  mtu 1500  owned",
        "│   ├── tap0  tap  up  mtu 1500  owned",
        "│   └── tap1  tap  up  mtu 1500  owned",
        "├── br1  bridge  up  mtu 1500  owned",
        "└── loose  tap  up  mtu 1500  owned",
    ]
    assert lines[7].split() == ["network", "state", "autostart", "persistent", "bridge", "owned"]
    assert lines[8].split() == ["default", "inactive", "yes", "yes", "virbr0", "no"]
    assert not any("veth0" in line or line.startswith("├── lo") for line in lines)


def test_show_tree_without_networks_says_why() -> None:
    text = r.show_tree("hv1", [], None, "this host does not serve network.list")
    assert text.splitlines() == ["hv1", "└── (no bridges or TAPs)", "",
                                 "networks: this host does not serve network.list"]


@pytest.mark.parametrize(("reply", "note"), [
    (Reply(ok=False, error={"code": "invalid_argument", "message": "unknown op 'network.list'"}),
     "this host does not serve network.list"),
    (Reply(ok=False, error={"code": "unavailable", "message": "libvirt is disabled"}),
     "unavailable: libvirt is disabled"),
    (None, "no reply to network.list"),
])
def test_missing_networks_are_explained(reply: Reply | None, note: str) -> None:
    assert vnetctl._networks(reply) == (None, note)


def test_hosts_table() -> None:
    replies = [
        Reply(ok=True, host_id="hv2", result={"host_id": "hv2", "status": "degraded",
                                              "version": "0.1.0",
                                              "broker_node": "10.0.0.2:5672",
                                              "components": {"libvirt": "reconnecting",
                                                             "broker": "connected"}}),
        Reply(ok=True, host_id="hv1", result={"host_id": "hv1", "status": "healthy",
                                              "version": "0.1.0", "components": {}}),
    ]
    lines = r.hosts(replies).splitlines()
    assert lines[0].split() == ["host", "status", "version", "broker", "node", "components"]
    assert lines[1].split() == ["hv1", "healthy", "0.1.0", "-"]
    assert lines[2].split() == ["hv2", "degraded", "0.1.0", "10.0.0.2:5672", "broker=connected",
                                "libvirt=reconnecting"]


def test_progress_bar() -> None:
    out = io.StringIO()
    p = r.Progress(4, out, enabled=True, width=8)
    for ok in (True, False, True, True):
        p.advance(ok)
    p.close()
    last = out.getvalue().split("\r")[-1]
    assert last.startswith("[########] 4/4  failed 1 ")
    silent = io.StringIO()
    q = r.Progress(4, silent, enabled=False)
    q.advance(True)
    q.close()
    assert silent.getvalue() == ""


def test_ops_lists_every_op(capsys: pytest.CaptureFixture[str]) -> None:
    assert vnetctl.main(["--json", "ops"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert set(listed) == set(OPS)
    assert "name" in listed["tap.ensure"] and "bridge" in listed["tap.ensure"]


def test_jobs_file_formats(tmp_path: Path) -> None:
    lines = tmp_path / "jobs.jsonl"
    lines.write_text('{"op": "tap.ensure", "args": {"name": "t0"}}\n\n{"op": "bridge.list"}\n')
    assert [j["op"] for j in vnetctl.load_jobs(str(lines))] == ["tap.ensure", "bridge.list"]
    array = tmp_path / "jobs.json"
    array.write_text('[{"op": "host.health"}]')
    assert vnetctl.load_jobs(str(array)) == [{"op": "host.health"}]
    bad = tmp_path / "bad.json"
    bad.write_text('[{"args": {}}]')
    with pytest.raises(ValueError, match="job 1"):
        vnetctl.load_jobs(str(bad))


def test_usage_errors_exit_64_without_a_broker(tmp_path: Path) -> None:
    url = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens: usage must fail first
    assert vnetctl.main(["--url", url, "--host", "h", "tap.ensure", "nokeyvalue"]) == 64
    assert vnetctl.main(["--url", url, "--host", "h", "apply", str(tmp_path / "no")]) == 64
    assert vnetctl.main(["--url", url, "--all-hosts", "apply", str(tmp_path / "no")]) == 64
    assert vnetctl.main(["completion", "zsh"]) == 64
    assert vnetctl.main([]) == 64


def _complete(script: str, words: list[str]) -> list[str]:
    bash = shutil.which("bash")
    assert bash
    line = " ".join(words)
    prog = (f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n"
            '_vnetctl; printf "%s\\n" "${COMPREPLY[@]}"\n')
    out = subprocess.run([bash, "--norc", "-c", prog], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    return [w for w in out.splitlines() if w]


def test_bash_completion_completes_commands_ops_and_keys() -> None:
    script = bash_script(vnetctl.build_parser(), vnetctl.op_fields())
    assert set(_complete(script, ["vnetctl", "tap."])) == {"tap.ensure", "tap.delete"}
    assert "hosts" in _complete(script, ["vnetctl", "--host", "hv1", "h"])
    assert "events" in _complete(script, ["vnetctl", "e"])
    assert set(_complete(script, ["vnetctl", "--host", "hv1", "tap.ensure", "br"])) == {
        "bridge="}
    assert "--all-hosts" in _complete(script, ["vnetctl", "--a"])
    assert _complete(script, ["vnetctl", "apply", "--progress", "al"]) == ["always"]
    assert _complete(script, ["vnetctl", "--output", "y"]) == ["yaml"]
    assert _complete(script, ["vnetctl", "show", "--format", "s"]) == ["svg"]
    assert _complete(script, ["vnetctl", "completion", ""]) == ["bash"]
    assert "--follow" in _complete(script, ["vnetctl", "events", "--f"])


def test_completion_works_when_loaded_inside_a_function() -> None:
    """bash-completion sources completions/vnetctl from a function (its lazy loader)."""
    script = bash_script(vnetctl.build_parser(), vnetctl.op_fields())
    wrapped = f"_load() {{\n{script}\n}}\n_load"
    assert set(_complete(wrapped, ["vnetctl", "tap.ensure", "br"])) == {"bridge="}


def test_completion_offers_exactly_the_parsers_options() -> None:
    """Generated, not a copy: every option the parser accepts, and nothing else."""
    import argparse
    parser = vnetctl.build_parser()
    script = bash_script(parser, vnetctl.op_fields())
    top = {o for a in parser._actions for o in a.option_strings}
    assert set(_complete(script, ["vnetctl", "-"])) == top
    assert "--version" in top and "--json" in top
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    show = {o for a in sub.choices["show"]._actions for o in a.option_strings}
    assert set(_complete(script, ["vnetctl", "show", "-"])) == show
    assert "--format" in show
