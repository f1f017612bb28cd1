"""Network namespaces for tests: ``vt-<labsuffix>-<n>``, always deleted afterwards.

Tests run inside the lab namespace (scripts/test.sh). ``ip netns add`` there creates a
fresh namespace (network namespaces are not nested); its /run/netns bind mount lives in
the lab's mount namespace, so it is visible to pytest and the daemons it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from typing import Any

from tests.support.env import Lab, in_root_netns, netns_inode, root_netns_inodes

_counter = itertools.count(1)


class CommandError(RuntimeError):
    def __init__(self, cmd: list[str], proc: subprocess.CompletedProcess[str]) -> None:
        self.cmd = cmd
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        super().__init__(
            f"{' '.join(cmd)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )


def _run(
    cmd: list[str], *, check: bool = True, timeout: float = 30.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and proc.returncode != 0:
        raise CommandError(cmd, proc)
    return proc


def prefix() -> str:
    return f"vt-{Lab.from_env().suffix}-"


def new_name() -> str:
    return f"{prefix()}{next(_counter)}"


def exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def list_ours() -> list[str]:
    out = _run(["ip", "-j", "netns", "list"]).stdout.strip()
    names = [e["name"] for e in json.loads(out)] if out else []
    return sorted(n for n in names if n.startswith(prefix()))


def create(name: str | None = None) -> str:
    """Create a namespace (default name ``vt-<suffix>-<n>``) with ``lo`` up."""
    if in_root_netns():
        raise RuntimeError("refusing to work from the root network namespace")
    name = name or new_name()
    if not name.startswith(prefix()):
        raise ValueError(f"test namespaces must start with {prefix()!r}: {name!r}")
    _run(["ip", "netns", "add", name])
    try:
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
    except BaseException:
        delete(name)
        raise
    return name


def pids(name: str) -> list[int]:
    out = _run(["ip", "netns", "pids", name], check=False).stdout
    return [int(p) for p in out.split()]


def delete(name: str, *, kill_timeout: float = 5.0) -> None:
    """Kill every process left in the namespace, then delete it. Never raises if gone."""
    if not exists(name):
        return
    if not name.startswith(prefix()):
        raise ValueError(f"not one of our namespaces: {name!r}")
    empty_and_delete(name, kill_timeout=kill_timeout)


def empty_and_delete(name: str, *, kill_timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, what runs in `name`, then delete it; the caller has
    checked the name is one of its own. Refuses our own and the root namespace."""
    ino = netns_inode(f"/run/netns/{name}")
    if ino == netns_inode("/proc/self/ns/net") or ino in root_netns_inodes():
        raise RuntimeError(f"{name} is our own or the root namespace")
    for sig, wait in ((signal.SIGTERM, kill_timeout), (signal.SIGKILL, 2.0)):
        left = pids(name)
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids(name) and time.monotonic() < deadline:
            time.sleep(0.05)
    _run(["ip", "netns", "del", name], check=False)


def run_in(
    ns: str, *cmd: str, check: bool = True, timeout: float = 30.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command inside namespace ``ns`` (``ip netns exec``); text output captured."""
    return _run(["ip", "netns", "exec", ns, *cmd], check=check, timeout=timeout, input=input)


def ip_json(ns: str, *args: str) -> Any:
    """Parsed output of ``ip -n NS -j ARGS`` (``[]`` when ip prints nothing)."""
    out = _run(["ip", "-n", ns, "-j", *args]).stdout.strip()
    return json.loads(out) if out else []


def inet6(addrs: list[dict[str, Any]]) -> list[str]:
    """The IPv6 addresses in ``ip -j addr`` output."""
    return [a["local"] for e in addrs for a in e.get("addr_info", []) if a["family"] == "inet6"]


def link(ns: str, name: str) -> dict[str, Any] | None:
    """``ip -d link show NAME`` in ``ns`` as a dict, or None when there is no such link."""
    proc = _run(["ip", "-n", ns, "-j", "-d", "link", "show", "dev", name], check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout or "[]")
    return data[0] if data else None


def links(ns: str) -> dict[str, dict[str, Any]]:
    """All links of ``ns`` by name (``ip -d link show``)."""
    return {e["ifname"]: e for e in ip_json(ns, "-d", "link", "show")}


async def arun_in(
    ns: str, *cmd: str, check: bool = True, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_in, ns, *cmd, check=check, timeout=timeout)


async def aip_json(ns: str, *args: str) -> Any:
    return await asyncio.to_thread(ip_json, ns, *args)


class NetnsFactory:
    """Creates namespaces on demand and deletes all of them in :meth:`cleanup`."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def __call__(self, name: str | None = None) -> str:
        ns = create(name)
        self.created.append(ns)
        return ns

    def cleanup(self) -> None:
        errors: list[BaseException] = []
        for ns in reversed(self.created):
            try:
                delete(ns)
            except Exception as exc:
                errors.append(exc)
        self.created.clear()
        if errors:
            raise errors[0]
