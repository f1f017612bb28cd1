"""vnetctl against real daemons: hosts, broadcast, show, apply with a progress bar."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import StartDaemon
from tests.support import netns as netns_mod

pytestmark = pytest.mark.integration


NO_CONFIG = Path(os.environ.get("VNETD_LAB_DIR", "/tmp")) / "vnetctl-empty.toml"


async def vnetctl(amqp_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    # An empty config: --url and --host decide, not the checkout's or /etc's config.
    NO_CONFIG.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VNETCTL_")}
    env["VNETD_CONFIG"] = str(NO_CONFIG)
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "vnetd.cli.vnetctl", "--url", amqp_url, *args],
        capture_output=True, text=True, timeout=120, check=False, env=env)


async def test_vnetctl_day_to_day(start_daemon: StartDaemon, netns_factory: netns_mod.NetnsFactory,
                                  amqp_url: str, tmp_path: Path) -> None:
    ns1, ns2 = netns_factory(), netns_factory()
    d1 = await start_daemon(ns1)
    d2 = await start_daemon(ns2)

    hosts = await vnetctl(amqp_url, "--json", "--timeout", "2", "hosts")
    assert hosts.returncode == 0, hosts.stderr
    seen = {h["host_id"]: h for h in json.loads(hosts.stdout)}
    assert {d1.host_id, d2.host_id} <= set(seen)
    assert seen[d1.host_id]["result"]["status"] in ("healthy", "degraded")
    table = await vnetctl(amqp_url, "--timeout", "2", "hosts")
    assert any(line.split()[0] == d2.host_id for line in table.stdout.splitlines()[1:])

    made = await vnetctl(amqp_url, "--host", d1.host_id, "bridge.ensure", "name=vbr0", "mtu=1400")
    assert made.returncode == 0, made.stderr + made.stdout

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"op": "tap.ensure", "args": {"name": f"vt{i}",
                                                                     "bridge": "vbr0"}}) + "\n"
                            for i in range(200)))
    applied = await vnetctl(amqp_url, "--host", d1.host_id, "apply", "--progress", "always",
                            "--concurrency", "16", str(jobs))
    assert applied.returncode == 0, applied.stderr + applied.stdout
    assert "200/200" in applied.stderr.split("\r")[-1]
    assert applied.stdout.strip().endswith("200 ok, 0 failed, 200 jobs")
    masters = {e["ifname"]: e.get("master") for e in netns_mod.ip_json(ns1, "link", "show")}
    assert all(masters.get(f"vt{i}") == "vbr0" for i in range(200))

    shown = await vnetctl(amqp_url, "--host", d1.host_id, "show")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == d1.host_id
    assert lines[1].startswith("└── vbr0  bridge  up  mtu 1400") or lines[1].startswith(
        "├── vbr0  bridge  up  mtu 1400")
    assert sum(1 for line in lines if "──  " not in line and " vt" in line) == 200
    assert any(line.startswith("networks:") or line.startswith("network ") for line in lines)

    everywhere = await vnetctl(amqp_url, "--all-hosts", "--json", "--timeout", "2",
                               "bridge.list")
    assert everywhere.returncode == 0, everywhere.stderr
    docs = [json.loads(chunk) for chunk in everywhere.stdout.replace("}\n{", "}\n\x00{")
            .split("\n\x00")]
    by_host = {doc["host_id"]: doc for doc in docs}
    assert [b["name"] for b in by_host[d1.host_id]["result"]["bridges"]] == ["vbr0"]
    assert by_host[d2.host_id]["result"]["bridges"] == []

    # A TAP that exists and is not vnetd's: forbidden, EX_NOPERM (77); it stays.
    netns_mod.run_in(ns2, "ip", "tuntap", "add", "dev", "foreign0", "mode", "tap")
    refused = await vnetctl(amqp_url, "--host", d2.host_id, "tap.delete", "name=foreign0")
    assert refused.returncode == 77, refused.stdout + refused.stderr
    assert refused.stdout.startswith("error: forbidden: ")
    as_json = await vnetctl(amqp_url, "--json", "tap.delete", "name=foreign0",
                            "--host", d2.host_id)
    assert as_json.returncode == 77
    assert json.loads(as_json.stdout)["error"]["code"] == "forbidden"
    assert netns_mod.link(ns2, "foreign0") is not None
    wrong_kind = await vnetctl(amqp_url, "--host", d2.host_id, "tap.delete", "name=lo")
    assert wrong_kind.returncode == 1 and wrong_kind.stdout.startswith("error: conflict: ")
    health = await vnetctl(amqp_url, "--json", "--host", d1.host_id, "host.health")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["result"]["host_id"] == d1.host_id
    bad = await vnetctl(amqp_url, "--host", d1.host_id, "tap.ensure", "name=bad/name")
    assert bad.returncode == 65 and bad.stdout.startswith("error: invalid_argument: ")
    # No reply in time is a temporary failure (EX_TEMPFAIL): the job may still run.
    nobody = await vnetctl(amqp_url, "--host", "no-such-host", "--timeout", "1", "host.health")
    assert nobody.returncode == 75
    assert "--message-id" in nobody.stderr
    no_broker = await vnetctl("amqp://guest:guest@127.0.0.1:1/", "--host", "h", "bridge.list")
    assert no_broker.returncode == 69


async def test_show_draws_the_host_as_svg(start_daemon: StartDaemon, netns: str,
                                          amqp_url: str) -> None:
    """A real daemon's host: a bridge with two TAPs and a foreign veth, one loose TAP."""
    import re
    d = await start_daemon(netns)
    for args in (("bridge.ensure", "name=pbr0"), ("tap.ensure", "name=ptap0", "bridge=pbr0"),
                 ("tap.ensure", "name=ptap1", "bridge=pbr0", "up=false"),
                 ("tap.ensure", "name=ploose")):
        made = await vnetctl(amqp_url, "--host", d.host_id, *args)
        assert made.returncode == 0, made.stdout + made.stderr
    # Not vnetd's: made with ip, attached with ip (vnetd would refuse to attach it).
    netns_mod.run_in(netns, "ip", "link", "add", "pveth0", "type", "veth", "peer", "name",
                     "pveth1")
    netns_mod.run_in(netns, "ip", "link", "set", "pveth0", "master", "pbr0", "up")

    dot = await vnetctl(amqp_url, "--host", d.host_id, "show", "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    assert dot.stdout.startswith("digraph vnetd {")
    svg = await vnetctl(amqp_url, "--host", d.host_id, "show", "--format", "svg")
    assert svg.returncode == 0, svg.stderr
    assert svg.stdout.lstrip().startswith("<?xml") and "<svg" in svg.stdout
    titles = set(re.findall(r"<title>([^<]*)</title>", svg.stdout))
    nodes = {t for t in titles if "&#45;&gt;" not in t}
    edges = {tuple(t.split("&#45;&gt;")) for t in titles if "&#45;&gt;" in t}
    assert {"pbr0", "ptap0", "ptap1", "ploose", "pveth0"} <= nodes
    assert "lo" not in nodes and "pveth1" not in nodes  # alone and not a bridge's: not drawn
    assert edges == {("pbr0", "ptap0"), ("pbr0", "ptap1"), ("pbr0", "pveth0")}

    def node(name: str) -> str:  # the SVG group of one node
        m = re.search(rf'<g id="node\d+" class="node">\s*<title>{re.escape(name)}</title>'
                      r"(.*?)</g>", svg.stdout, re.S)
        assert m, name
        return m.group(1)

    assert 'fill="#cfe8d4"' in node("ptap0")       # vnetd's
    assert 'fill="#e4e4e4"' in node("pveth0")      # not vnetd's
    assert 'stroke="#c62828"' in node("ptap1")     # down
    assert 'stroke="#2e7d32"' in node("pbr0")      # up
