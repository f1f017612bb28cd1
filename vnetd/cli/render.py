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
