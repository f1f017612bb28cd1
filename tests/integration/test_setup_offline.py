"""Offline, scripts/setup.sh fails within seconds and names what is missing.

A copy of the checkout without a .venv, set up in a namespace with no route anywhere and
with pip's configuration emptied (no local wheel directory, as on a fresh machine): the
venv is created, pip cannot reach an index, and set-up stops at once (no retries, 5 s
timeouts) listing the Python packages it could not install. (The apt step, all packages
being installed here, is not reached; its offline path was checked by hand: about 6 s.)
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.env import REPO_ROOT

pytestmark = pytest.mark.integration


def copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-z"], check=True,
                           capture_output=True).stdout
    pack = subprocess.run(["tar", "-C", str(REPO_ROOT), "--null", "-T", "-", "-cf", "-"],
                          input=files, check=True, capture_output=True).stdout
    dest.mkdir()
    subprocess.run(["tar", "-C", str(dest), "-xf", "-"], input=pack, check=True)


async def test_setup_offline_fails_fast_naming_what_is_missing(netns: str,
                                                               tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    await asyncio.to_thread(copy_checkout, checkout)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": str(tmp_path),
           "PIP_CONFIG_FILE": "/dev/null"}
    t0 = time.monotonic()
    proc = await asyncio.to_thread(
        subprocess.run, ["ip", "netns", "exec", netns, "bash",
                         str(checkout / "scripts" / "setup.sh")],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    took = time.monotonic() - t0
    assert proc.returncode != 0, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("[setup] ERROR: pip could not install"), proc.stderr
    assert "missing Python packages: " in last and "aio-pika" in last and "pyroute2" in last
    assert took < 90, f"{took:.0f} s"  # venv creation included; no minutes of retries
