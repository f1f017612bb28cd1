"""`vnetctl segment ensure`: argument parsing, the per-host jobs, the result table."""

from __future__ import annotations

from typing import Any

import pytest

from vnetd.cli import segment
from vnetd.client import Reply
from vnetd.fleet import Guest, Host, HostResult, Segment, ensure_segment, segment_jobs


def test_wants_segment_only_as_first_positional() -> None:
    assert segment.wants(["--url", "amqp://x", "segment", "ensure", "a=1.2.3.4"])
    assert not segment.wants(["--host", "segment", "link.list"])
    assert not segment.wants(["link.list"])


def test_parse_hosts_and_guests() -> None:
    hosts = segment.parse_hosts(["hv1=198.51.100.11@u0", "hv2=198.51.100.12"],
                                ["hv2=52:54:00:00:00:02/10.0.0.2", "hv1=52:54:00:00:00:01"])
    assert hosts == [Host("hv1", "198.51.100.11", "u0", (Guest("52:54:00:00:00:01"),)),
                     Host("hv2", "198.51.100.12", None, (Guest("52:54:00:00:00:02", "10.0.0.2"),))]
    with pytest.raises(ValueError, match="twice"):
        segment.parse_hosts(["a=1.1.1.1", "a=1.1.1.2"], [])
    with pytest.raises(ValueError, match="one of the hosts"):
        segment.parse_hosts(["a=1.1.1.1"], ["b=52:54:00:00:00:01"])


def test_each_host_gets_the_others_as_full_state() -> None:
    hosts = [Host("a", "198.51.100.1", guests=(Guest("52:54:00:00:00:01", "10.0.0.1"),)),
             Host("b", "198.51.100.2", guests=(Guest("52:54:00:00:00:02", "10.0.0.2"),)),
             Host("c", "198.51.100.3")]
    jobs = segment_jobs(Segment(vni=7, bridge="br7", vxlan="vx7", proxy=True), hosts)
    assert [c["op"] for c in jobs["a"]] == ["bridge.ensure", "vxlan.ensure", "fdb.converge"]
    fdb = jobs["a"][2]["args"]
    assert fdb["remotes"] == ["198.51.100.2", "198.51.100.3"]
    assert fdb["fdb"] == [{"mac": "52:54:00:00:00:02", "dst": "198.51.100.2"}]
    assert fdb["neighbours"] == [{"ip": "10.0.0.2", "mac": "52:54:00:00:00:02"}]
    assert jobs["c"][1]["args"]["local"] == "198.51.100.3"


class FakeClient:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any] | None]] = []

    async def call(self, host_id: str, op: str, args: dict[str, Any] | None = None, *,
                   timeout: float = 30.0, message_id: str | None = None) -> Reply:
        self.sent.append((host_id, op, args))
        if host_id == "bad":
            return Reply(ok=True, result={"results": [
                {"ok": True, "result": {}},
                {"ok": False, "error": {"code": "invalid_argument", "message": "MTU too big"}}],
                "failed": 1, "skipped": 1})
        n = len((args or {})["commands"][2]["args"]["remotes"])
        return Reply(ok=True, result={"results": [
            {"ok": True, "result": {}}, {"ok": True, "result": {"created": True}},
            {"ok": True, "result": {"remotes": n, "added": {"remotes": n}, "removed": {},
                                    "conflicts": []}}]})


async def test_ensure_segment_results_and_table() -> None:
    client = FakeClient()
    done: list[HostResult] = []
    results = await ensure_segment(
        client, Segment(vni=7, bridge="br7", vxlan="vx7"),
        [Host("a", "198.51.100.1"), Host("bad", "198.51.100.2"), Host("c", "198.51.100.3")],
        on_done=done.append)
    assert [r.ok for r in results] == [True, False, True] and len(done) == 3
    assert results[0].remotes == 2 and results[0].created
    assert results[1].step == "vxlan.ensure"
    assert {op for _, op, _ in client.sent} == {"batch"}
    text = segment.result_table(results)
    assert "FAILED at vxlan.ensure: MTU too big" in text and text.splitlines()[0].startswith("HOST")


def test_show_tree_names_the_segment() -> None:
    from vnetd.cli.render import show_tree
    links = [{"name": "br-a", "kind": "bridge", "state": "up", "owned": True, "master": None},
             {"name": "vx-a", "kind": "vxlan", "state": "up", "owned": True, "master": "br-a",
              "vxlan": {"vni": 100, "remotes": 2}}]
    text = show_tree("hv1", links, [])
    assert "vx-a  vxlan  up  vni 100 remotes 2  owned" in text
