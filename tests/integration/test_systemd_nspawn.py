"""The shipped units under a real systemd: booted in a systemd-nspawn container.

Layout: a test namespace ``vt-<suffix>-<n>`` joined to the lab by a veth
(198.19.<n>.1 on the lab side, 198.19.<n>.2 = ``host0`` inside); the container
(tests/support/nspawn.py) runs in that namespace, so every device vnetd makes
is there and is checked there with ``ip``. The lab's broker listens on the
lab's loopback only: a relay on 198.19.<n>.1 (tests/support/relay.py) forwards
to it, and the container's config points at the relay. Nothing is created in the
root namespace; the container, its overlay, the relay and the namespace are all
removed at the end of the module, also on failure.

Installation: the README's "Deployment (systemd)" shell block is read from
README.md and run inside the container, line for line, from the checkout, with
two differences (both said where they happen below):

1. Step 1 (``python3 -m venv /opt/vnetd && /opt/vnetd/bin/pip install
   /path/to/vnetd``) needs PyPI, and the container has no route to it. It becomes:
   ``python3 -m venv --without-pip /opt/vnetd``, a ``.pth`` file that puts the
   checkout's .venv site-packages (the same dependencies, already installed)
   after the venv's own, and ``pip install --no-deps --no-build-isolation
   --no-index .`` of the checkout: vnetd itself is installed into /opt/vnetd by
   pip as the README does, with its ``vnetd``/``vnetctl`` entry points.
2. Step 3 says "set host_id, [amqp] url": the test does so by rewriting the
   container's copy of config/vnetd.toml before the README's ``install`` line
   (the overlay keeps the host's file untouched; the test checks it is). It also
   sets zero grace periods with a 1 s lease, so that the cleanup tests can see a
   removal without waiting ten minutes, and a 40 s drain bound (20 s by default:
   this machine is shared, and under load the drained batch can need more).
   libvirt stays enabled (``qemu:///system``, the shipped default): the host
   image's libvirtd is started in the container first, as on a hypervisor.

Facts of the container, not of the units, are set up first: /dev/net/tun is
made 0666, which udev's default rule (50-udev-default.rules) does on every host
with udev and nothing does here (the unit runs as an unprivileged user without
CAP_DAC_OVERRIDE, so it needs that mode); libvirtd gets a drop-in that re-opens
/proc/sys/net, which nspawn mounts read-only; and the container boots
basic.target (see tests/support/nspawn.py).

Runtime drop-ins change two settings, as an operator would with
``systemctl edit --runtime``: ``WatchdogSec=5s`` for the watchdog test (the
shipped 30 s would make it 30 s longer) and an ``OnActiveSec=1s`` trigger for
the timer test (the shipped timer is hourly).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import re
import subprocess
import sys
import sysconfig
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support import netns as netns_mod
from tests.support import toml
from tests.support.env import REPO_ROOT, Lab, in_root_netns
from tests.support.nspawn import Container
from tests.support.queues import queue_counts
from tests.support.relay import TcpRelay
from tests.support.rpc import RawRpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

UNIT = "vnetd.service"
CLEANUP = "vnetd-cleanup.service"
TIMER = "vnetd-cleanup.timer"
# docs/service.md: the MESSAGE_IDs of key events in the journal
READY_ID = "b5ad21ae74624b0996c83d592ecd967c"
STOPPING_ID = "de5a25ac53134d4b83d80d1cc272a831"
STOPPED_ID = "eaf22b14e9e64a28b19538533a564d93"
CAP_NET_ADMIN = 1 << 12
_ids = itertools.count(1)

# README step 1 without PyPI (see the module docstring). `.` is the checkout.
OFFLINE_STEP_1 = """\
python3 -c 'import sys; assert sys.version_info[:2] == {version}, "not the .venv Python"'
python3 -m venv --without-pip /opt/vnetd
site="$(/opt/vnetd/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
echo {deps} >"$site/vnetd-test-deps.pth"
/opt/vnetd/bin/python -m pip install --quiet --no-deps --no-build-isolation --no-index .
"""


@dataclass
class Deployment:
    box: Container
    host_id: str
    netns: str
    relay: TcpRelay
    install_log: str
    install_seconds: float


def readme_deployment_block() -> list[str]:
    """The lines of the README's "Deployment (systemd)" shell block."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Deployment (systemd)", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()


def install_script() -> str:
    lines = readme_deployment_block()
    step1 = [i for i, line in enumerate(lines) if line.startswith("python3 -m venv /opt/vnetd")]
    assert len(step1) == 1 and "pip install" in lines[step1[0]], (
        "README step 1 changed: update OFFLINE_STEP_1 in this test", lines)
    deps = sysconfig.get_path("purelib")  # the checkout's .venv, which runs this test
    lines[step1[0]] = OFFLINE_STEP_1.format(deps=deps, version=tuple(sys.version_info[:2]))
    assert any("systemctl enable --now vnetd.service" in line for line in lines), lines
    return "\n".join(lines) + "\n"


def container_config(host_id: str, amqp_url: str) -> str:
    shipped = tomllib.loads((REPO_ROOT / "config" / "vnetd.toml").read_text())
    return toml.dumps(toml.deep_merge(shipped, {
        "host_id": host_id,
        # The machine is shared: a drain that needs more than the default 20 s
        # under load is still a drain (TimeoutStopSec=45s stays above this).
        "amqp": {"url": amqp_url, "drain_timeout_seconds": 40},
        "cleanup": {"tap_grace_seconds": 0, "bridge_grace_seconds": 0, "lease_seconds": 1},
    }))


def join_to_lab(netns: str, n: int, suffix: str) -> tuple[str, str]:
    """A veth from the lab (where this test runs) into ``netns``; (lab side, inside) IPs."""
    outside, inside = f"198.19.{n}.1", f"198.19.{n}.2"
    lab_end = f"sd{suffix}{n}"[:15]
    assert not in_root_netns()  # the lab end lives where this test runs: the lab
    for cmd in (["link", "add", lab_end, "type", "veth", "peer", "name", "host0",
                 "netns", netns],
                ["addr", "add", f"{outside}/30", "dev", lab_end],
                ["link", "set", lab_end, "up"],
                ["-n", netns, "addr", "add", f"{inside}/30", "dev", "host0"],
                ["-n", netns, "link", "set", "host0", "up"]):
        subprocess.run(["ip", *cmd], check=True, capture_output=True, timeout=30)
    return outside, inside


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def deployed(lab: Lab) -> Iterator[Deployment]:
    n = next(_ids)
    host_id = f"sd-{lab.suffix}-{n}"
    host_config_hash = _sha256(REPO_ROOT / "config" / "vnetd.toml")
    factory = netns_mod.NetnsFactory()
    try:
        ns = factory()
        outside, _ = join_to_lab(ns, n, lab.suffix)
        port = urlsplit(lab.amqp_url).port or 5672
        with TcpRelay((outside, port), ("127.0.0.1", port)) as relay, \
                Container(name=f"vnetd-{host_id}", netns=ns,
                          base=lab.dir / f"nspawn-{n}") as box:
            box.boot()
            # Stand-in for udev's rule (module docstring), in the container's own /dev.
            box.run("chmod", "0666", "/dev/net/tun")
            # A hypervisor's libvirtd, without the networks the host image autostarts.
            # nspawn mounts /proc/sys read-only; libvirtd writes per-bridge sysctls
            # there, so it gets /proc/sys/net back the way vnetd.service gets its
            # ipv6/conf: ReadWritePaths= inside its own ProtectKernelTunables= tree.
            box.sh("rm -f /etc/libvirt/qemu/networks/autostart/*.xml\n"
                   "mkdir -p /run/systemd/system/libvirtd.service.d\n"
                   "printf '[Service]\\nProtectKernelTunables=yes\\n"
                   "ReadWritePaths=/proc/sys/net\\n'"
                   " >/run/systemd/system/libvirtd.service.d/50-test-procsys.conf\n"
                   "systemctl daemon-reload\nsystemctl start libvirtd.service")
            repo = str(REPO_ROOT)
            # README step 3 "set host_id, [amqp] url": the container's copy only.
            box.run("sh", "-c", f"cat >{repo}/config/vnetd.toml",
                    input=container_config(host_id, f"amqp://guest:guest@{outside}:{port}/"))
            t0 = time.monotonic()
            try:
                log = box.sh(install_script(), cwd=repo, timeout=180)
            except BaseException as exc:
                exc.add_note("---- container journal (tail) ----\n" + box.journal(lines=80))
                raise
            install_seconds = time.monotonic() - t0
            assert _sha256(REPO_ROOT / "config" / "vnetd.toml") == host_config_hash, \
                "the container wrote to the host's checkout"
            yield Deployment(box, host_id, ns, relay, log, install_seconds)
    finally:
        factory.cleanup()


@contextlib.contextmanager
def journal_on_failure(d: Deployment) -> Iterator[None]:
    """Attach the container's journal to a failing test's report."""
    try:
        yield
    except BaseException as exc:
        exc.add_note("---- container journal (tail) ----\n" + d.box.journal(lines=80))
        raise


def vnetd_state(d: Deployment) -> dict[str, str]:
    return d.box.show(UNIT, "ActiveState", "SubState", "MainPID", "NRestarts", "StatusText",
                      "Result", "ExecMainCode", "ExecMainStatus", "InvocationID")


def ensure_running(d: Deployment) -> dict[str, str]:
    if vnetd_state(d)["ActiveState"] != "active":
        d.box.systemctl("start", UNIT)
    return vnetd_state(d)


def ready_line(d: Deployment) -> re.Pattern[str]:
    return re.compile(rf"ready: consuming jobs for {re.escape(d.host_id)}, \d+ owned devices")


def process_status(d: Deployment, pid: str) -> dict[str, str]:
    text = d.box.run("cat", f"/proc/{pid}/status").stdout
    return dict(re.findall(r"^(\w+):\s*(.*)$", text, re.MULTILINE))


# ---------------------------------------------------------------------- 1. start
def test_start_reaches_active_with_the_ready_status_line(deployed: Deployment) -> None:
    d, box = deployed, deployed.box
    with journal_on_failure(d):
        # The README's own `enable --now` already started it.
        assert box.run("systemctl", "is-enabled", UNIT, TIMER).stdout.split() == \
            ["enabled", "enabled"], d.install_log
        assert vnetd_state(d)["ActiveState"] == "active", d.install_log
        # systemd read every line of the shipped units (it logs what it ignores).
        complaints = re.findall(r".*/etc/systemd/system/vnetd[\w.-]*:\d+:.*",
                                box.journal(lines=2000))
        assert not complaints, complaints

        box.systemctl("stop", UNIT)
        assert vnetd_state(d)["ActiveState"] == "inactive"
        t0 = time.monotonic()
        box.systemctl("start", UNIT)  # Type=notify: returns once READY=1 arrived
        start_seconds = time.monotonic() - t0
        st = vnetd_state(d)
        assert (st["ActiveState"], st["SubState"]) == ("active", "running"), st
        assert ready_line(d).fullmatch(st["StatusText"]), st
        assert box.journal("-u", UNIT, f"MESSAGE_ID={READY_ID}", f"_PID={st['MainPID']}"), \
            "no journal entry with the ready MESSAGE_ID from this process"

        # It runs with the shipped identity and sandbox, not as root.
        ps = process_status(d, st["MainPID"])
        vnetd_uid = box.run("id", "-u", "vnetd").stdout.strip()
        assert ps["Uid"].split() == [vnetd_uid] * 4, ps
        assert int(ps["CapEff"], 16) == CAP_NET_ADMIN and int(ps["CapBnd"], 16) == CAP_NET_ADMIN
        assert ps["NoNewPrivs"] == "1" and ps["Seccomp"] == "2", ps
        assert d.relay.connections > 0, "the daemon did not reach the broker through the veth"
        print(f"install {d.install_seconds:.1f} s; systemctl start {start_seconds:.2f} s")


# ---------------------------------------------------------------------- 3. TAPs
async def test_the_sandbox_lets_it_create_and_attach_taps(
        deployed: Deployment, rpc: RawRpc) -> None:
    d = deployed
    with journal_on_failure(d):
        ensure_running(d)
        bridge = await rpc.call(d.host_id, "bridge.ensure", {"name": "sdbr0"}, timeout=15)
        assert bridge["ok"], bridge
        tap = await rpc.call(d.host_id, "tap.ensure", {
            "name": "sdtap0", "bridge": "sdbr0", "owner_uid": 65534, "group_gid": 65534,
        }, timeout=15)
        assert tap["ok"], tap

        br = netns_mod.link(d.netns, "sdbr0")
        dev = netns_mod.link(d.netns, "sdtap0")
        assert br is not None and br["linkinfo"]["info_kind"] == "bridge"
        assert dev is not None, netns_mod.links(d.netns).keys()
        info = dev["linkinfo"]
        assert info["info_kind"] == "tun" and info["info_data"]["type"] == "tap", info
        assert info["info_data"]["persist"] is True
        assert str(info["info_data"].get("user")) in ("65534", "nobody"), info
        assert dev["master"] == "sdbr0"
        assert dev["ifalias"].startswith("vnetd:v1")
        assert "UP" in dev["flags"]
        # IPv6 off on a bridge port (OSSN-0069): address generation none, set over
        # netlink (tests/integration/test_tap_ipv6.py).
        assert dev["inet6_addr_gen_mode"] == "none", dev
        # A TAP without a bridge also gets the disable_ipv6 sysctl: written through
        # the sandbox (ProtectKernelTunables= + ReadWritePaths=/proc/sys/net/ipv6/conf).
        lone = await rpc.call(d.host_id, "tap.ensure", {"name": "sdtap1"}, timeout=15)
        assert lone["ok"], lone
        disabled = netns_mod.run_in(d.netns, "cat", "/proc/sys/net/ipv6/conf/sdtap1/disable_ipv6")
        assert disabled.stdout.strip() == "1"
        gone = await rpc.call(d.host_id, "tap.delete", {"name": "sdtap1"}, timeout=15)
        assert gone["ok"] and gone["result"]["deleted"], gone


# ---------------------------------------------------------------------- 2. watchdog
def test_a_frozen_daemon_is_restarted_by_the_watchdog(deployed: Deployment) -> None:
    d, box = deployed, deployed.box
    dropin = "/run/systemd/system/vnetd.service.d/50-test-watchdog.conf"
    with journal_on_failure(d):
        try:
            box.sh(f"mkdir -p {Path(dropin).parent}\n"
                   f"printf '[Service]\\nWatchdogSec=5s\\n' >{dropin}\n"
                   f"systemctl daemon-reload\nsystemctl restart {UNIT}")
            assert box.show(UNIT, "WatchdogUSec")["WatchdogUSec"] == "5s"
            before = vnetd_state(d)
            assert before["ActiveState"] == "active", before
            pid = before["MainPID"]

            box.run("kill", "-STOP", pid)
            frozen_at = time.monotonic()
            assert process_status(d, pid)["State"].startswith("T"), "not frozen"

            def restarted() -> dict[str, str] | None:
                st = vnetd_state(d)
                ok = (st["NRestarts"] == str(int(before["NRestarts"]) + 1)
                      and st["MainPID"] not in ("0", pid)
                      and (st["ActiveState"], st["SubState"]) == ("active", "running"))
                return st if ok else None

            after = box.wait_until(restarted, 45, "a watchdog restart")
            back_in = time.monotonic() - frozen_at
            assert ready_line(d).fullmatch(after["StatusText"]), after
            journal = box.journal("-u", UNIT, lines=400)
            assert f"Killing process {pid} (vnetd) with signal SIGABRT" in journal
            assert "Watchdog timeout (limit 5s)" in journal
            assert "Failed with result 'watchdog'" in journal
            # The new process pings: systemd records each WATCHDOG=1 it receives.
            last_ping = "WatchdogTimestampMonotonic"
            first = box.show(UNIT, last_ping)[last_ping]
            box.wait_until(lambda: box.show(UNIT, last_ping)[last_ping] != first, 10,
                           "a watchdog ping from the restarted daemon")
            assert vnetd_state(d)["NRestarts"] == after["NRestarts"]
            print(f"frozen -> restarted and ready in {back_in:.1f} s")
        finally:
            box.sh(f"rm -f {dropin}\nsystemctl daemon-reload")


# ---------------------------------------------------------------------- 4. cleanup timer
async def test_the_cleanup_timer_runs_vnetd_cleanup(deployed: Deployment, rpc: RawRpc) -> None:
    d, box = deployed, deployed.box
    dropin = f"/run/systemd/system/{TIMER}.d/50-test-now.conf"
    with journal_on_failure(d):
        ensure_running(d)
        timer = box.show(TIMER, "ActiveState", "Triggers")
        assert timer == {"ActiveState": "active", "Triggers": CLEANUP}, timer
        # An orphan: a TAP vnetd made, that nobody opened, whose lease (1 s) ran out.
        for op, args in (("bridge.ensure", {"name": "sdbr1"}),
                         ("tap.ensure", {"name": "sdorph0", "bridge": "sdbr1"})):
            reply = await rpc.call(d.host_id, op, args, timeout=15)
            assert reply["ok"], reply
        await asyncio.sleep(1.5)  # the lease is time itself: nothing to wait on but it
        last = box.show(CLEANUP, "ExecMainExitTimestampMonotonic")
        try:
            box.sh(f"mkdir -p {Path(dropin).parent}\n"
                   f"printf '[Timer]\\nOnActiveSec=1s\\nRandomizedDelaySec=0\\n"
                   f"AccuracySec=1ms\\n' >{dropin}\n"
                   f"systemctl daemon-reload\nsystemctl restart {TIMER}")

            def ran() -> dict[str, str] | None:
                st = box.show(CLEANUP, "ActiveState", "Result", "ExecMainStatus",
                              "ExecMainExitTimestampMonotonic", "InvocationID")
                done = (st["ExecMainExitTimestampMonotonic"]
                        != last["ExecMainExitTimestampMonotonic"]
                        and st["ActiveState"] == "inactive")
                return st if done else None

            st = box.wait_until(ran, 30, "vnetd-cleanup.service started by the timer")
            trigger = box.show(TIMER, "LastTriggerUSecMonotonic")["LastTriggerUSecMonotonic"]
            assert trigger not in ("0", ""), "the service ran, but not from the timer"
        finally:
            box.sh(f"rm -f {dropin}\nsystemctl daemon-reload\nsystemctl restart {TIMER}")
        assert (st["Result"], st["ExecMainStatus"]) == ("success", "0"), st
        out = box.journal(f"_SYSTEMD_INVOCATION_ID={st['InvocationID']}", "-o", "cat")
        assert re.search(r"sdorph0\s+tap\.idle\s+removed", out), out
        assert re.search(r"ran in the daemon: .* [1-9]\d* removed", out), out
        assert netns_mod.link(d.netns, "sdorph0") is None


# ---------------------------------------------------------------------- 5. stop drains
async def test_stop_drains_the_job_in_flight(
        deployed: Deployment, rpc: RawRpc, amqp_url: str) -> None:
    d, box = deployed, deployed.box
    count = 600  # about 3 s of work here on a quiet machine, 15 s under load
    with journal_on_failure(d):
        before = ensure_running(d)
        batch = {"commands": [{"op": "tap.ensure", "args": {"name": f"sdd{i}"}}
                              for i in range(count)]}
        call = asyncio.create_task(rpc.call(d.host_id, "batch", batch, timeout=120))
        deadline = time.monotonic() + 30
        while (made := len(await netns_mod.aip_json(d.netns, "link", "show"))) < 50:
            assert time.monotonic() < deadline, "the batch never got under way"
            assert not call.done(), call.result()
        assert not call.done(), "the batch finished before the stop: make it bigger"
        t0 = time.monotonic()
        stop = asyncio.create_task(asyncio.to_thread(box.systemctl, "stop", UNIT))
        reply = await call
        await stop
        stop_seconds = time.monotonic() - t0

        assert reply["ok"] is True, reply
        assert (reply["result"]["completed"], reply["result"]["failed"]) == (count, 0), reply
        st = vnetd_state(d)
        assert (st["ActiveState"], st["SubState"], st["Result"]) == \
            ("inactive", "dead", "success"), st
        assert (st["ExecMainCode"], st["ExecMainStatus"]) == ("1", "0"), st  # exited 0
        assert st["NRestarts"] == before["NRestarts"], "a clean stop must not restart"
        # Acked: nothing left for redelivery, and no consumer.
        assert await queue_counts(amqp_url, d.host_id) == (0, 0)
        names = {e["ifname"] for e in await netns_mod.aip_json(d.netns, "link", "show")}
        assert {f"sdd{i}" for i in range(count)} <= names

        journal = box.journal(f"_SYSTEMD_INVOCATION_ID={before['InvocationID']}",
                              "-o", "json", lines=5000)
        ids = re.findall(r'"MESSAGE_ID":"(\w+)"', journal)
        assert STOPPING_ID in ids and STOPPED_ID in ids, "no stopping/stopped in the journal"
        assert "drain_timeout" not in journal
        # The job was in flight when the stop began: its line comes after "stopping".
        text = box.journal(f"_SYSTEMD_INVOCATION_ID={before['InvocationID']}", "-o", "cat",
                           lines=5000).splitlines()
        stopping = next(i for i, line in enumerate(text) if line.startswith("stopping"))
        job = next(i for i, line in enumerate(text) if line.startswith("job batch"))
        assert stopping < job, text[-20:]
        print(f"systemctl stop with a batch of {count} TAPs in flight ({made} links when it "
              f"was sent): {stop_seconds:.1f} s")


# ---------------------------------------------------------------------- 4b. local sweep
def test_the_cleanup_unit_sweeps_by_itself_when_no_daemon_answers(
        deployed: Deployment) -> None:
    """With vnetd stopped, `vnetd cleanup` sweeps locally: under the cleanup unit's
    own sandbox, which then must be able to delete an owned orphan itself."""
    d, box = deployed, deployed.box
    with journal_on_failure(d):
        if vnetd_state(d)["ActiveState"] != "inactive":
            box.systemctl("stop", UNIT)
        # An owned orphan left by a daemon that is gone (made here with ip, marked).
        netns_mod.run_in(d.netns, "ip", "tuntap", "add", "dev", "sdorph1", "mode", "tap")
        netns_mod.run_in(d.netns, "ip", "link", "set", "sdorph1", "alias", "vnetd:v1")
        box.systemctl("start", CLEANUP)  # oneshot: returns when the sweep is over
        st = box.show(CLEANUP, "Result", "ExecMainStatus", "InvocationID")
        assert (st["Result"], st["ExecMainStatus"]) == ("success", "0"), st
        out = box.journal(f"_SYSTEMD_INVOCATION_ID={st['InvocationID']}", "-o", "cat")
        assert re.search(r"sdorph1\s+tap\.idle\s+removed", out), out
        assert "ran in the local" in out, out
        assert netns_mod.link(d.netns, "sdorph1") is None


# ---------------------------------------------------------------------- libvirt
async def test_libvirt_is_reachable_from_the_sandbox(deployed: Deployment, rpc: RawRpc) -> None:
    """SupplementaryGroups=libvirt and the sandbox: qemu:///system as user vnetd."""
    d, box = deployed, deployed.box
    with journal_on_failure(d):
        st = ensure_running(d)
        assert ready_line(d).fullmatch(st["StatusText"]), st  # not "degraded: libvirt ..."
        spec = {"kind": "isolated", "bridge": {"name": "virbr-sd0"},
                "ipv4": {"address": "10.231.0.1", "prefix": 24}}
        reply = await rpc.call(d.host_id, "network.define",
                               {"name": "sdiso", "start": True, "spec": spec}, timeout=60)
        assert reply["ok"], reply
        assert (reply["result"]["active"], reply["result"]["owned"]) == (True, True), reply
        info = box.run("virsh", "-c", "qemu:///system", "net-info", "sdiso").stdout
        assert re.search(r"Active:\s+yes", info), info
        assert netns_mod.link(d.netns, "virbr-sd0") is not None
        for op in ("network.destroy", "network.undefine"):
            reply = await rpc.call(d.host_id, op, {"name": "sdiso"}, timeout=60)
            assert reply["ok"], reply
