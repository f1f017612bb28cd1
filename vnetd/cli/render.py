"""Human output for vnetctl: a table for every list, `brctl show` for bridges,
`ip -br link` for links, `virsh net-list --all` for networks; JSON and YAML as asked."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from vnetd.client import Reply


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def bridges(result: dict[str, Any]) -> str:
    """The `brctl show` layout: one line per bridge, its ports below it."""
    rows: list[list[str]] = []
    for br in result.get("bridges", []):
        ports = br.get("ports") or [""]
        stp = "yes" if br.get("bridge", {}).get("stp") else "no"
        rows.append([br["name"], br["state"], stp, "yes" if br["owned"] else "no", ports[0]])
        rows.extend(["", "", "", "", port] for port in ports[1:])
    return table(rows, ["bridge name", "state", "STP enabled", "owned", "interfaces"])


def links(result: dict[str, Any]) -> str:
    """`ip -br link` columns first (name, state, MAC), then what vnetd adds."""
    rows = [[link["name"], link["state"].upper(), link.get("mac") or "", link["kind"],
             str(link["mtu"]), link.get("master") or "", "yes" if link["owned"] else "no"]
            for link in result.get("links", [])]
    return table(rows, ["name", "state", "mac", "kind", "mtu", "master", "owned"])


def networks(result: dict[str, Any]) -> str:
    """`virsh net-list --all`: Name, State, Autostart, Persistent; then bridge, kind, owned."""
    rows = [[str(n.get("name")), "active" if n.get("active") else "inactive",
             _yes(n.get("autostart")), _yes(n.get("persistent")), str(n.get("bridge") or ""),
             str(n.get("kind") or ""), _yes(n.get("owned"))]
            for n in result.get("networks") or []]
    return table(rows, ["name", "state", "autostart", "persistent", "bridge", "kind", "owned"])


def health(result: dict[str, Any]) -> str:
    """host.health: the status, then one line per component with why it is not fine."""
    lines = [f"host: {result.get('host_id')}", f"status: {result.get('status')}",
             f"version: {result.get('version')}"]
    details = result.get("details") or {}
    comps = result.get("components") or {}
    rows = []
    for name in sorted(comps):
        d = details.get(name) or {}
        rows.append([name, str(comps[name]), d.get("since") or "", d.get("last_error") or ""])
    if rows and details:
        lines += ["", table(rows, ["component", "state", "since", "last error"])]
    elif rows:  # healthy: no details to show
        lines += ["", table([row[:2] for row in rows], ["component", "state"])]
    kernel = result.get("kernel") or {}
    if kernel:
        lines += ["", "kernel: " + " ".join(f"{k}={_yes(v) if isinstance(v, bool) else v}"
                                            for k, v in sorted(kernel.items()))]
    for reason in result.get("reasons") or []:
        lines.append(f"degraded: {reason}")
    return "\n".join(lines)


def batch(result: dict[str, Any]) -> str:
    rows = []
    for i, item in enumerate(result.get("results") or []):
        if item.get("ok"):
            res = item.get("result") or {}
            rows.append([str(i), "ok", str(res.get("name", "")), _short(res)])
        else:
            err = item.get("error") or {}
            rows.append([str(i), "error", str((err.get("details") or {}).get("name", "")),
                         f"{err.get('code')}: {err.get('message')}"])
    return "\n".join([table(rows, ["#", "outcome", "name", "result"]),
                      f"{result.get('completed', 0)} completed, {result.get('failed', 0)} failed, "
                      f"{result.get('skipped', 0)} skipped"])


def _short(result: dict[str, Any]) -> str:
    keys = ("created", "changed", "deleted", "attached", "detached")
    return " ".join(f"{k}={result[k]}" for k in keys if k in result)


def dumpxml(result: dict[str, Any]) -> str:
    return str(result.get("xml", "")).rstrip()


def snapshot(result: dict[str, Any]) -> str:
    parts = [links(result)]
    if result.get("networks") is not None:
        parts.append(networks(result))
    rest = {k: v for k, v in result.items() if k not in ("links", "networks")}
    if rest:
        parts.append(_plain(rest))
    return "\n\n".join(parts)


def _plain(result: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}"
                     for k, v in result.items())


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "bridge.list": bridges, "link.list": links, "network.list": networks,
    "host.health": health, "host.snapshot": snapshot, "batch": batch,
    "network.dumpxml": dumpxml}
"""Table renderers by op; any other op prints its result as `key: value` lines."""


def document(reply: Reply, *, with_host: bool) -> dict[str, Any]:
    """A reply as data, for --output json/yaml."""
    body: dict[str, Any] = {"ok": reply.ok, "result": reply.result} if reply.ok else {
        "ok": False, "error": reply.error}
    if with_host:
        body["host_id"] = reply.host_id
    return body


def dump(data: Any, output: str) -> str:
    """JSON or YAML text of plain data."""
    if output == "yaml":
        import yaml
        return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False)).rstrip()
    return json.dumps(data, indent=2)


def render(op: str, reply: Reply, *, raw: bool = False, with_host: bool = False,
           output: str | None = None) -> str:
    """One reply as text: a table (default), or `output` json/yaml (`raw` = json)."""
    output = output or ("json" if raw else "table")
    if output != "table":
        return dump(document(reply, with_host=with_host), output)
    prefix = f"[{reply.host_id}] " if with_host else ""
    if not reply.ok:
        err = reply.error or {}
        return f"{prefix}error: {err.get('code')}: {err.get('message')}"
    return prefix + RENDERERS.get(op, _plain)(reply.result)


def _yes(value: Any) -> str:
    return "yes" if value else "no"


def hosts(replies: list[Reply]) -> str:
    """`vnetctl hosts`: one row per host that answered host.health."""
    rows = []
    for reply in sorted(replies, key=lambda r: r.host_id or ""):
        if not reply.ok:
            err = reply.error or {}
            rows.append([reply.host_id or "?", "error", "", "", f"{err.get('code')}: "
                         f"{err.get('message')}"])
            continue
        r = reply.result
        comps = " ".join(f"{k}={v}" for k, v in sorted((r.get("components") or {}).items()))
        rows.append([str(r.get("host_id") or reply.host_id), str(r.get("status", "?")),
                     str(r.get("version", "")), str(r.get("broker_node") or "-"), comps])
    return table(rows, ["host", "status", "version", "broker node", "components"])


def _link_line(link: dict[str, Any]) -> str:
    parts = [link["name"], link.get("kind") or "?", link.get("state") or "?"]
    if link.get("mtu"):
        parts.append(f"mtu {link['mtu']}")
    if link.get("mac"):
        parts.append(link["mac"])
    vx = link.get("vxlan")
    if vx:  # a segment's port: which segment, and how many hosts it floods to
        parts.append(f"vni {vx.get('vni')} remotes {vx.get('remotes')}")
    parts.append("owned" if link.get("owned") else "not owned")
    return "  ".join(parts)


def ovs_tree(bridges: list[dict[str, Any]]) -> list[str]:
    """Open vSwitch bridges (ovs.bridge.list) with their ports and VLANs, `ovs-vsctl show`-like."""
    lines = ["ovs bridges:"]
    for i, br in enumerate(sorted(bridges, key=lambda b: str(b.get("name")))):
        last = i == len(bridges) - 1
        lines.append(("└── " if last else "├── ") + "  ".join([
            str(br.get("name")), "ovs", str(br.get("datapath_type") or ""),
            "owned" if br.get("owned") else "not owned"]))
        ports = sorted(br.get("ovs_ports") or [], key=lambda p: str(p.get("name")))
        for j, p in enumerate(ports):
            vlan = (f"tag {p['tag']}" if p.get("tag") is not None else
                    f"trunks {','.join(map(str, p['trunks']))}" if p.get("trunks") else "")
            text = "  ".join(x for x in [str(p.get("name")), vlan, p.get("vlan_mode") or "",
                                         f"ofport {p.get('ofport')}",
                                         "owned" if p.get("owned") else "not owned"] if x)
            lines.append(("    " if last else "│   ")
                         + ("└── " if j == len(ports) - 1 else "├── ") + text)
    if not bridges:
        lines.append("└── (none)")
    return lines


def show_tree(host_id: str, all_links: list[dict[str, Any]],
              nets: list[dict[str, Any]] | None, networks_note: str | None = None,
              ovs: list[dict[str, Any]] | None = None) -> str:
    """`vnetctl show`: bridges with their ports, loose TAPs, then `virsh net-list --all`."""
    by_name = {link["name"]: link for link in all_links}
    top_bridges = sorted((link for link in all_links if link.get("kind") == "bridge"),
                         key=lambda x: x["name"])
    ports: dict[str, list[dict[str, Any]]] = {}
    for link in all_links:
        if link.get("master") in by_name:
            ports.setdefault(link["master"], []).append(link)
    loose = sorted((link for link in all_links
                    if link.get("kind") == "tap" and not link.get("master")),
                   key=lambda x: x["name"])
    lines = [host_id]
    top: list[tuple[str, list[dict[str, Any]]]] = [
        (_link_line(b), sorted(ports.get(b["name"], []), key=lambda x: x["name"]))
        for b in top_bridges]
    top += [(_link_line(t), []) for t in loose]
    for i, (text, children) in enumerate(top):
        last = i == len(top) - 1
        lines.append(("└── " if last else "├── ") + text)
        for j, child in enumerate(children):
            branch = "    " if last else "│   "
            lines.append(branch + ("└── " if j == len(children) - 1 else "├── ")
                         + _link_line(child))
    if not top:
        lines.append("└── (no bridges or TAPs)")
    lines.append("")
    if nets is None:
        lines.append(f"networks: {networks_note or 'not available'}")
    else:
        rows = [[str(n.get("name")), "active" if n.get("active") else "inactive",
                 _yes(n.get("autostart")), _yes(n.get("persistent")), str(n.get("bridge") or ""),
                 _yes(n.get("owned"))] for n in nets]
        lines.append(table(rows, ["network", "state", "autostart", "persistent", "bridge",
                                  "owned"]))
    if ovs is not None:  # only hosts that manage Open vSwitch
        lines += ["", *ovs_tree(ovs)]
    return "\n".join(lines)


class Progress:
    """A one-line progress bar on a terminal (stderr): done/total, failures, rate."""

    def __init__(self, total: int, stream: Any, *, enabled: bool, width: int = 30) -> None:
        import time
        self.total = total
        self.stream = stream
        self.enabled = enabled and total > 0
        self.width = width
        self.done = 0
        self.failed = 0
        self._clock = time.monotonic
        self._started = self._clock()
        self._drawn = 0.0

    def line(self) -> str:
        filled = self.width * self.done // max(self.total, 1)
        elapsed = max(self._clock() - self._started, 1e-9)
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total}"
                f"  failed {self.failed}  {self.done / elapsed:.0f}/s")

    def advance(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        now = self._clock()
        if self.enabled and (now - self._drawn >= 0.1 or self.done == self.total):
            self._drawn = now
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
