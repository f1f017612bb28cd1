"""The systemd units: `systemd-analyze verify` clean and the hardening target reached.

systemd-analyze works without systemd as PID 1 (verify with --root on a scratch
tree holding the distribution's units and a stand-in for /usr/local/bin/vnetd;
security with --offline=yes).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.env import REPO_ROOT

UNITS_DIR = REPO_ROOT / "systemd"
UNITS = ("vnetd.service", "vnetd-cleanup.service", "vnetd-cleanup.timer")
SERVICES = ("vnetd.service", "vnetd-cleanup.service")
TARGET_EXPOSURE = 3.0
SYSTEM_UNITS = next((p for p in (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
                     if (p / "sysinit.target").exists()), None)


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze missing: scripts/setup.sh installs the systemd package"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


def _scratch_root(tmp_path: Path, units: dict[str, str]) -> Path:
    assert SYSTEM_UNITS is not None, "no distribution units (sysinit.target) found"
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "lib/systemd").mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "lib/systemd/system", symlinks=True)
    for binary in ("usr/local/bin/vnetd",):
        stub = root / binary
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    for name, text in units.items():
        (root / "etc/systemd/system" / name).write_text(text)
    return root


def _verify(tmp_path: Path, units: dict[str, str]) -> subprocess.CompletedProcess[str]:
    root = _scratch_root(tmp_path, units)
    return _analyze("verify", f"--root={root}", *units)


def _unit_texts() -> dict[str, str]:
    return {name: (UNITS_DIR / name).read_text() for name in UNITS}


def test_every_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    proc = _verify(tmp_path, _unit_texts())
    assert proc.returncode == 0, proc.stderr
    # verify exits 0 on directives it ignores ("Failed to parse ..., ignoring"): any
    # output at all is a finding.
    assert proc.stderr.strip() == "", proc.stderr


@pytest.mark.parametrize(("line", "bad"), [
    ("WatchdogSec=30s", "WatchdogSec=thirty"),
    ("Type=notify", "Type=notifyy"),
    ("ExecStart=/usr/local/bin/vnetd ", "ExecStart=/usr/local/bin/vnetd-missing "),
])
def test_verify_reports_a_broken_unit(tmp_path: Path, line: str, bad: str) -> None:
    """The check above can fail: the same run on a unit with one bad value complains."""
    texts = _unit_texts()
    assert line in texts["vnetd.service"]
    texts["vnetd.service"] = texts["vnetd.service"].replace(line, bad)
    proc = _verify(tmp_path, texts)
    assert proc.returncode != 0 or "vnetd.service" in proc.stderr


def _exposure(unit: Path) -> float:
    proc = _analyze("security", "--offline=yes", "--no-pager", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


@pytest.mark.parametrize("name", SERVICES)
def test_security_exposure_reaches_the_target(name: str) -> None:
    score = _exposure(UNITS_DIR / name)
    assert score <= TARGET_EXPOSURE, f"{name}: exposure {score} > {TARGET_EXPOSURE}"


def test_security_score_moves_with_the_hardening(tmp_path: Path) -> None:
    """Without its sandbox the same unit scores far worse: the analyzer reads our file."""
    hardened = _exposure(UNITS_DIR / "vnetd.service")
    keep = ("[", "Description", "Type", "ExecStart", "Restart", "WatchdogSec")
    bare = "\n".join(line for line in (UNITS_DIR / "vnetd.service").read_text().splitlines()
                     if line.startswith(keep))
    (tmp_path / "vnetd.service").write_text(bare + "\n")
    assert _exposure(tmp_path / "vnetd.service") > hardened + 5


def _directives(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for raw in (UNITS_DIR / name).read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_service_is_a_notify_daemon_with_watchdog_and_least_privilege() -> None:
    d = _directives("vnetd.service")
    assert d["Type"] == ["notify"]
    assert d["Restart"] == ["on-failure"]
    assert d["WatchdogSec"] and d["WatchdogSec"][0] != "0"
    assert d["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert d["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    assert d["User"] == ["vnetd"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["ProtectHome"] == ["yes"]
    assert d["PrivateTmp"] == ["yes"]
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_NETLINK AF_INET AF_INET6"]
    assert d["DeviceAllow"] == ["/dev/net/tun rw"]
    assert "@system-service" in d["SystemCallFilter"]
    assert d["RestartPreventExitStatus"] == ["78"]


def test_cleanup_timer_is_persistent_and_randomized() -> None:
    t = _directives("vnetd-cleanup.timer")
    assert t["Persistent"] == ["true"]
    assert t["RandomizedDelaySec"] and t["RandomizedDelaySec"][0] not in ("0", "")
    assert t["Unit"] == ["vnetd-cleanup.service"]
    s = _directives("vnetd-cleanup.service")
    assert s["Type"] == ["oneshot"]
    assert s["ExecStart"][0].split()[1] == "cleanup"
