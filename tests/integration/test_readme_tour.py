"""The README's five-minute tour, line by line as written, so that it cannot rot.

The tour's code block is read out of README.md and each line is run by bash, in
order, against a real daemon (libvirt enabled, a private libvirtd) whose config
is found through VNETD_CONFIG, as a user's is found in the checkout. The daemon
manages a namespace of its own; the tour's `ip` lines are pointed at it by a
shell function (`ip -n NS ...`), the only difference from a user's terminal,
where command 1 manages the namespace it runs in. Every line's exit status and
the key part of its output are checked, and the lines of the README and the
expectations here must be the same set: a changed tour fails until this follows.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import StartDaemon
from tests.support import netns as netns_mod
from tests.support.env import REPO_ROOT
from tests.support.libvirtd import PrivateLibvirtd

pytestmark = pytest.mark.integration

# command (the line without its comment) -> (exit status, texts its output must contain)
EXPECT: dict[str, tuple[int, list[str]]] = {
    ". .venv/bin/activate": (0, []),
    "vnetctl host.health": (0, ["status: healthy", "connected"]),
    "vnetctl bridge.ensure name=br-demo mtu=1450": (0, ["created: True", "mtu: 1450"]),
    "vnetctl tap.ensure name=tap-demo0 bridge=br-demo": (0, ["created: ", "master: br-demo"]),
    "vnetctl bridge.list": (0, ["bridge name", "br-demo", "tap-demo0"]),
    "ip -d link show tap-demo0": (0, ["alias vnetd:v1", "master br-demo"]),
    "ip tuntap add dev tap-other mode tap": (0, []),
    "vnetctl tap.delete name=tap-other": (77, ["error: forbidden: "]),
    "vnetctl tap.ensure name=bad/name": (65, ["error: invalid_argument: "]),
    "vnetctl tap.ensrue name=tap-demo1": (64, ["did you mean tap.ensure"]),
    "vnetctl network.list": (0, ["name", "state", "autostart", "persistent", "bridge"]),
    "vnetctl show": (0, ["├── br-demo  bridge  up  mtu 1450", "│   └── tap-demo0  tap  up",
                         "└── tap-other  tap", "not owned", "network"]),
    "vnetctl show --format svg > host.svg": (0, []),
    "vnetd cleanup --dry-run": (0, ["dry run, ran in the daemon: "]),
    "vnetctl --json tap.delete name=tap-demo0": (0, ['"deleted": true']),
    "vnetctl bridge.delete name=br-demo": (0, ["deleted: True"]),
    "ip tuntap del dev tap-other mode tap": (0, []),
}


def tour_lines() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## A five-minute tour", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no ```sh block in the README's tour"
    return [line for line in block.group(1).splitlines() if line.strip()]


def command_of(line: str) -> str:
    return line.split("  #", 1)[0].strip()


def test_every_tour_line_has_an_expectation() -> None:
    commands = [command_of(x) for x in tour_lines()]
    assert list(dict.fromkeys(commands)) == list(EXPECT)  # (a line may repeat: idempotence)


@pytest.fixture
async def tour_daemon(start_daemon: StartDaemon, libvirtd: PrivateLibvirtd,
                      tmp_path: Path) -> tuple[str, Path]:
    d = await start_daemon(netns=libvirtd.netns, libvirt={
        "enabled": True, "uri": libvirtd.uri, "reconnect_max_seconds": 1.0})
    return d.netns, d.config_path


def run_line(line: str, *, netns: str, config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # `ip` goes to the daemon's namespace; everything else runs as the README says.
    prelude = 'ip() { command ip -n "$TOUR_NETNS" "$@"; }\n. .venv/bin/activate\n'
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VNETCTL_", "VIRTUAL_ENV"))}
    env.update(TOUR_NETNS=netns, VNETD_CONFIG=str(config))
    return subprocess.run(["bash", "-c", prelude + line], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=120, check=False)


async def test_the_tour_works_as_written(tour_daemon: tuple[str, Path], tmp_path: Path) -> None:
    netns, config = tour_daemon
    # A directory of the user's own with the checkout's .venv, so host.svg lands here.
    (tmp_path / ".venv").symlink_to(REPO_ROOT / ".venv")
    seen_created: list[str] = []
    for line in tour_lines():
        command = command_of(line)
        status, texts = EXPECT[command]
        proc = await asyncio.to_thread(run_line, line, netns=netns, config=config,
                                       cwd=tmp_path)
        out = proc.stdout + proc.stderr
        assert proc.returncode == status, f"{line}\n-> exit {proc.returncode}\n{out}"
        for text in texts:
            assert text in out, f"{line}\n-> no {text!r} in:\n{out}"
        if command.startswith("vnetctl tap.ensure name=tap-demo0"):
            seen_created.append(re.search(r"created: (\w+)", out).group(1))  # type: ignore[union-attr]
            if len(seen_created) == 2:
                assert "changed: False" in out
        if command == "vnetctl tap.delete name=tap-other":
            assert netns_mod.link(netns, "tap-other") is not None  # forbidden: it stays
        if command == "vnetctl tap.ensure name=bad/name":
            assert netns_mod.link(netns, "bad") is None
    assert seen_created == ["True", "False"]  # the second time nothing was done
    svg = (tmp_path / "host.svg").read_text()
    assert "<title>br&#45;demo&#45;&gt;tap&#45;demo0</title>" in svg
    left = set(netns_mod.links(netns))
    assert not left & {"br-demo", "tap-demo0", "tap-other"}, left
