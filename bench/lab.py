"""The benchmark's own lab: a network namespace with a private RabbitMQ, like scripts/test.sh.

Names are `vnetd-bench-<hex>` (the lab) and `vb-<hex>-<n>` (namespaces for devices):
deliberately outside the `vnetd-lab-*` / `vt-*` patterns that `scripts/lab.sh sweep`
removes, so another engineer's `make test` never sweeps a running benchmark, and a
benchmark never touches theirs. Everything is torn down in `finally`; nothing is ever
created in the root namespace (the process re-executes itself inside the lab).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.env import REPO_ROOT, netns_inode, root_netns_inodes
from tests.support.netns import empty_and_delete

BROKER_SH = REPO_ROOT / "scripts" / "broker.sh"
LAB_ENV = "VNETD_BENCH_LAB"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(*cmd: str, check: bool = True, timeout: float = 120.0,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                          input=input, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def ns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def ns_pids(name: str) -> list[int]:
    return [int(p) for p in run("ip", "netns", "pids", name, check=False).stdout.split()]


def ns_delete(name: str, prefix: str) -> None:
    """Delete one of OUR namespaces (name checked), killing what is left in it."""
    if not name.startswith(prefix) or not ns_exists(name):
        return
    empty_and_delete(name)


def ns_create(name: str) -> str:
    if ns_exists(name):
        raise RuntimeError(f"namespace {name} already exists")
    run("ip", "netns", "add", name)
    run("ip", "-n", name, "link", "set", "lo", "up")
    return name


@dataclass(frozen=True)
class Lab:
    """What the re-executed benchmark learns from its environment."""

    netns: str
    suffix: str
    dir: Path
    amqp_url: str

    @classmethod
    def from_env(cls) -> Lab:
        data = json.loads(os.environ[LAB_ENV])
        return cls(netns=data["netns"], suffix=data["suffix"], dir=Path(data["dir"]),
                   amqp_url=data["amqp_url"])

    @property
    def sub_prefix(self) -> str:
        return f"vb-{self.suffix}-"


def in_lab() -> bool:
    return LAB_ENV in os.environ


class SubNamespaces:
    """Namespaces for devices (`vb-<suffix>-<n>`), all deleted by `cleanup`."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.created: list[str] = []
        self._n = 0

    def new(self) -> str:
        if netns_inode("/proc/self/ns/net") in root_netns_inodes():
            raise RuntimeError("refusing to work from the root network namespace")
        self._n += 1
        name = ns_create(f"{self.lab.sub_prefix}{self._n}")
        self.created.append(name)
        return name

    def delete(self, name: str) -> None:
        ns_delete(name, self.lab.sub_prefix)
        if name in self.created:
            self.created.remove(name)

    def cleanup(self) -> None:
        for name in reversed(list(self.created)):
            self.delete(name)


@contextlib.contextmanager
def private_lab() -> Iterator[tuple[str, dict[str, str]]]:
    """Create the lab namespace and its broker; yields (netns, env for the inner run)."""
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (namespaces, netlink)")
    suffix = os.urandom(3).hex()
    lab = f"vnetd-bench-{suffix}"
    lab_dir = REPO_ROOT / ".lab" / lab
    base = lab_dir / "broker"
    node = f"vnetd-bench-{suffix}@localhost"
    broker = [str(BROKER_SH), "--netns", lab, "--base", str(base), "--node", node,
              "--port", "5672", "--dist-port", "25672", "--timeout", "180"]
    lab_dir.mkdir(parents=True, exist_ok=True)
    try:
        ns_create(lab)
        t0 = time.monotonic()
        subprocess.run([broker[0], "start", *broker[1:]], check=True)
        log(f"lab {lab} ready (broker {time.monotonic() - t0:.1f}s)")
        env = {LAB_ENV: json.dumps({"netns": lab, "suffix": suffix, "dir": str(lab_dir),
                                    "amqp_url": "amqp://guest:guest@127.0.0.1:5672/"}),
               "VNETD_ROOT_NETNS_INO": str(netns_inode("/proc/self/ns/net"))}
        yield lab, env
    finally:
        log(f"tearing down {lab}")
        if ns_exists(lab):
            subprocess.run([broker[0], "stop", *broker[1:]], check=False)
        out = run("ip", "-j", "netns", "list", check=False).stdout.strip()
        names = [e["name"] for e in json.loads(out)] if out else []
        for name in names:
            if name.startswith(f"vb-{suffix}-"):
                ns_delete(name, f"vb-{suffix}-")
        ns_delete(lab, lab)
        # Daemon logs are kept (in .lab/<lab>/daemons/) only when the run failed.
        kept = base if sys.exc_info()[0] is None else None
        subprocess.run(["rm", "-rf", str(lab_dir if kept else base)], check=False)
        if not kept:
            log(f"daemon logs kept in {lab_dir}/daemons")
