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


async def vnetctl(amqp_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VNETCTL_")}
    env["VNETD_CONFIG"] = "/nonexistent"
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "vnetd.cli.vnetctl", "--url", amqp_url, *args],
        capture_output=True, text=True, timeout=120, check=False, env=env)


async def test_vnetctl_day_to_day(start_daemon: StartDaemon, netns_factory: netns_mod.NetnsFactory,
                                  amqp_url: str, tmp_path: Path) -> None:
    ns1, ns2 = netns_factory(), netns_factory()
    d1 = await start_daemon(ns1)
    d2 = await start_daemon(ns2)

    hosts = await vnetctl(amqp_url, "--json", "", "--timeout", "2", "hosts")
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
    applied = await vnetctl(amqp_url, "--host", d1.host_id, "--progress", "always",
                            "--concurrency", "16", "apply", str(jobs))
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

    everywhere = await vnetctl(amqp_url, "--all-hosts", "--json", "", "--timeout", "2",
                               "bridge.list")
    assert everywhere.returncode == 0, everywhere.stderr
    docs = [json.loads(chunk) for chunk in everywhere.stdout.replace("}\n{", "}\n\x00{")
            .split("\n\x00")]
    by_host = {doc["host_id"]: doc for doc in docs}
    assert [b["name"] for b in by_host[d1.host_id]["result"]["bridges"]] == ["vbr0"]
    assert by_host[d2.host_id]["result"]["bridges"] == []

    refused = await vnetctl(amqp_url, "--host", d2.host_id, "tap.delete", "name=lo")
    assert refused.returncode == 1
    assert refused.stdout.startswith("error: ")
    nobody = await vnetctl(amqp_url, "--host", "no-such-host", "--timeout", "1", "host.health")
    assert nobody.returncode == 69
