"""The lab environment exported by scripts/test.sh."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

NOT_IN_LAB = (
    "integration tests need the lab namespace and its private broker: "
    "run them through scripts/test.sh (make test), or deselect them with -m 'not integration'"
)


class NotInLabError(RuntimeError):
    pass


@dataclass(frozen=True)
class Lab:
    netns: str  # VNETD_LAB_NETNS
    suffix: str  # VNETD_LAB_SUFFIX: per-run id used in every name we create
    dir: Path  # VNETD_LAB_DIR: state of this run (.lab/<netns>/)
    amqp_url: str  # VNETD_TEST_AMQP_URL

    @classmethod
    def from_env(cls) -> Lab:
        netns = os.environ.get("VNETD_LAB_NETNS")
        url = os.environ.get("VNETD_TEST_AMQP_URL")
        lab_dir = os.environ.get("VNETD_LAB_DIR")
        if not (netns and url and lab_dir):
            raise NotInLabError(NOT_IN_LAB)
        suffix = os.environ.get("VNETD_LAB_SUFFIX") or netns.rsplit("-", 1)[-1]
        return cls(netns=netns, suffix=suffix, dir=Path(lab_dir), amqp_url=url)


def in_lab() -> bool:
    return bool(os.environ.get("VNETD_LAB_NETNS"))


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def root_netns_inodes() -> set[int]:
    """Inode(s) of the machine's root network namespace.

    /proc/1/ns/net is not readable here (PID 1 is the VM's init, beyond our reach), so
    also use kthreadd's (PID 2: kernel threads always live in the initial namespace) and
    VNETD_ROOT_NETNS_INO, which scripts/test.sh records before entering the lab.
    """
    found: set[int] = set()
    for path in ("/proc/1/ns/net", "/proc/2/ns/net"):
        with contextlib.suppress(OSError):
            found.add(netns_inode(path))
    env = os.environ.get("VNETD_ROOT_NETNS_INO")
    if env:
        found.add(int(env))
    if not found:
        raise RuntimeError("cannot determine the root network namespace: refusing to run")
    return found


def in_root_netns() -> bool:
    """True when this process shares the machine's root network namespace."""
    return netns_inode("/proc/self/ns/net") in root_netns_inodes()
