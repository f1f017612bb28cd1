"""README command 1 for real: scripts/run.sh starts a RabbitMQ and a libvirtd where none
answers, the daemon serves libvirt networks, and `scripts/run.sh stop` ends what it started
(the broker, its epmd, libvirtd) and nothing else.

It runs in a namespace of its own and a private mount namespace: /var/lib/rabbitmq,
/var/log/rabbitmq, /etc/libvirt, /var/lib/libvirt, /var/log/libvirt are bind mounts of
fresh directories and /run/libvirt is a tmpfs, so the broker and the libvirtd that
run.sh starts the way it would on a fresh machine (no systemd here: directly) own nothing
of the machine's.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import netns as netns_mod
from tests.support.env import REPO_ROOT

pytestmark = pytest.mark.integration

SCENARIO = r"""
set -u
mount --make-rprivate /
mount --bind "$P/rmq" /var/lib/rabbitmq; mount --bind "$P/rmqlog" /var/log/rabbitmq
mount --bind "$P/lvetc" /etc/libvirt; mount --bind "$P/lvlib" /var/lib/libvirt
mount --bind "$P/lvlog" /var/log/libvirt; mount -t tmpfs tmpfs /run/libvirt
cd "$REPO"
bash scripts/run.sh >"$P/run.log" 2>&1 &
RUN=$!
for _ in $(seq 150); do
    .venv/bin/vnetctl --timeout 2 host.health >"$P/health.txt" 2>&1 && break
    sleep 1
done
echo "== health"; cat "$P/health.txt"
echo "== network.list"; .venv/bin/vnetctl network.list; echo "rc=$?"
echo "== before stop"
F=$VNETD_RUN_DIR/libvirtd.pid; [[ -f $F ]] && echo "libvirtd pid file: $(cat "$F")"
kill -TERM "$RUN"; wait "$RUN"; echo "daemon exit $?"
echo "== stop"; bash scripts/run.sh stop 2>&1
echo "== stop again"; bash scripts/run.sh stop 2>&1
sleep 1
echo "== left"; for p in $(ip netns pids "$NS"); do echo "$(cat /proc/$p/comm 2>/dev/null)"; done
"""


def test_run_sh_starts_broker_and_libvirtd_and_stops_them(netns: str, tmp_path: Path) -> None:
    for d in ("rmq", "rmqlog", "lvlib", "lvlog", "state", "run"):
        (tmp_path / d).mkdir()
    shutil.copytree("/etc/libvirt", tmp_path / "lvetc")
    for xml in (tmp_path / "lvetc" / "qemu" / "networks").rglob("*.xml"):
        xml.unlink()  # a fresh libvirtd without the machine's networks
    shutil.chown(tmp_path / "rmq", "rabbitmq", "rabbitmq")
    shutil.chown(tmp_path / "rmqlog", "rabbitmq", "rabbitmq")
    config = tmp_path / "vnetd.toml"
    config.write_text(f'host_id = "run-{netns}"\n'
                      '[amqp]\nurl = "amqp://guest:guest@127.0.0.1:5672/"\n'
                      f'state_dir = "{tmp_path / "state"}"\n'
                      '[libvirt]\nenabled = true\nuri = "qemu:///system"\n')
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
           "P": str(tmp_path), "REPO": str(REPO_ROOT), "NS": netns,
           "VNETD_CONFIG": str(config), "VNETD_RUN_DIR": str(tmp_path / "run")}
    proc = subprocess.run(["ip", "netns", "exec", netns, "unshare", "-m", "bash", "-c",
                           SCENARIO], env=env, capture_output=True, text=True, timeout=400,
                          check=False)
    out = proc.stdout + proc.stderr
    run_log = (tmp_path / "run.log").read_text() if (tmp_path / "run.log").exists() else ""
    report = f"{out}\n-- run.log --\n{run_log}"
    assert proc.returncode == 0, report
    health = out.split("== health", 1)[1].split("== network.list", 1)[0]
    assert "status: healthy" in health, report
    assert any(line.split()[:2] == ["libvirt", "connected"] for line in health.splitlines()), \
        report
    assert "rc=0" in out.split("== network.list", 1)[1].split("== before stop")[0], report
    assert "starting rabbitmq-server" in run_log and "starting libvirtd in the background" \
        in run_log, run_log
    assert "libvirtd pid file: " in out, report
    stop = out.split("== stop", 1)[1].split("== stop again", 1)[0]
    assert "stopping libvirtd (pid " in stop and "stopping the RabbitMQ" in stop, report
    assert "epmd stopped" in stop, report
    again = out.split("== stop again", 1)[1].split("== left", 1)[0]
    assert "nothing to stop" in again, report
    left = out.split("== left", 1)[1].split()
    assert not {"beam.smp", "epmd", "libvirtd", "vnetd"} & set(left), report


async def test_run_sh_says_plainly_when_libvirt_is_off(netns: str, tmp_path: Path) -> None:
    """With `[libvirt] enabled = false` it says networks are off and which line turns them on;
    the broker is remote here, so nothing is started and the daemon's failure is not ours."""
    config = tmp_path / "vnetd.toml"
    config.write_text('[amqp]\nurl = "amqp://guest:guest@192.0.2.1:5672/"\n'
                      '[libvirt]\nenabled = false\n')
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
           "VNETD_CONFIG": str(config), "VNETD_RUN_DIR": str(tmp_path / "run"),
           "VNETD_AMQP__RECONNECT_INTERVAL_SECONDS": "0.2"}
    proc = await asyncio.to_thread(
        subprocess.run, ["ip", "netns", "exec", netns, "timeout", "20", "bash",
                         str(REPO_ROOT / "scripts" / "run.sh")],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert "broker at 192.0.2.1:5672 is remote: not starting a local one" in proc.stderr
    assert "libvirt networks are off ([libvirt] enabled = false in" in proc.stderr
    assert "set it to true to serve them" in proc.stderr
    assert not (tmp_path / "run" / "broker.port").exists()
    assert netns_mod.pids(netns) == []
