"""Human output for vnetctl: tables for lists, `brctl show` for bridges."""

from __future__ import annotations

import json
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
    rows = [[link["name"], link["kind"], link["state"], str(link["mtu"]), link.get("mac") or "",
             link.get("master") or "", "yes" if link["owned"] else "no"]
            for link in result.get("links", [])]
    return table(rows, ["name", "kind", "state", "mtu", "mac", "master", "owned"])


def _plain(result: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}"
                     for k, v in result.items())


RENDERERS = {"bridge.list": bridges, "link.list": links}


def render(op: str, reply: Reply, *, raw: bool, with_host: bool) -> str:
    prefix = f"[{reply.host_id}] " if with_host else ""
    if raw:
        body: dict[str, Any] = {"ok": reply.ok, "result": reply.result} if reply.ok else {
            "ok": False, "error": reply.error}
        if with_host:
            body["host_id"] = reply.host_id
        return json.dumps(body, indent=2)
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
            rows.append([reply.host_id or "?", "error", "", f"{err.get('code')}: "
                         f"{err.get('message')}"])
            continue
        r = reply.result
        comps = " ".join(f"{k}={v}" for k, v in sorted((r.get("components") or {}).items()))
        rows.append([str(r.get("host_id") or reply.host_id), str(r.get("status", "?")),
                     str(r.get("version", "")), comps])
    return table(rows, ["host", "status", "version", "components"])


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


def show_tree(host_id: str, links: list[dict[str, Any]], networks: list[dict[str, Any]] | None,
              networks_note: str | None = None) -> str:
    """`vnetctl show`: bridges with their ports, loose TAPs, then `virsh net-list --all`."""
    by_name = {link["name"]: link for link in links}
    bridges = sorted((link for link in links if link.get("kind") == "bridge"),
                     key=lambda x: x["name"])
    ports: dict[str, list[dict[str, Any]]] = {}
    for link in links:
        if link.get("master") in by_name:
            ports.setdefault(link["master"], []).append(link)
    loose = sorted((link for link in links if link.get("kind") == "tap" and not link.get("master")),
                   key=lambda x: x["name"])
    lines = [host_id]
    top: list[tuple[str, list[dict[str, Any]]]] = [
        (_link_line(b), sorted(ports.get(b["name"], []), key=lambda x: x["name"]))
        for b in bridges]
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
    if networks is None:
        lines.append(f"networks: {networks_note or 'not available'}")
    else:
        rows = [[str(n.get("name")), "active" if n.get("active") else "inactive",
                 _yes(n.get("autostart")), _yes(n.get("persistent")), str(n.get("bridge") or ""),
                 _yes(n.get("owned"))] for n in networks]
        lines.append(table(rows, ["network", "state", "autostart", "persistent", "bridge",
                                  "owned"]))
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
