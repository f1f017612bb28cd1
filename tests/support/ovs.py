"""Open vSwitch for a test: ovsdb-server + ovs-vswitchd inside a test namespace.

This kernel has no openvswitch datapath module, so bridges use the userspace
datapath (datapath_type=netdev): each bridge's internal port is a TAP that
ovs-vswitchd opens in the namespace it runs in, and ports of veth ends carry
traffic. Both daemons run directly inside the test's namespace (never through
ovs-ctl, which would `modprobe openvswitch` and use the machine's run
directory) with a private database, run directory, log directory and control
sockets under ``root``: nothing of the machine's own OVS (if any) is touched.

Clients use ``remote`` (``unix:<root>/run/db.sock``); ``vsctl()`` runs the
packaged ovs-vsctl against it, for independent checks. ``stop()`` always kills
both daemons (also when start failed half-way); the namespace belongs to the
caller.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")


class OvsError(RuntimeError):
    pass


class PrivateOvs:
    def __init__(self, root: Path, netns: str) -> None:
        self.root = Path(root)
        self.netns = netns
        self.db_proc: subprocess.Popen[bytes] | None = None
        self.vswitchd_proc: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []

    # ------------------------------------------------------------ facts
    @property
    def rundir(self) -> Path:
        return self.root / "run"

    @property
    def socket(self) -> Path:
        return self.rundir / "db.sock"

    @property
    def remote(self) -> str:
        return f"unix:{self.socket}"

    @property
    def db_file(self) -> Path:
        return self.root / "conf.db"

    @property
    def env(self) -> dict[str, str]:
        """What makes OVS's own tools (and libvirt's ovs-vsctl) use this instance."""
        return {"OVS_RUNDIR": str(self.rundir), "OVS_DBDIR": str(self.root),
                "OVS_LOGDIR": str(self.root / "log"), "OVS_SYSCONFDIR": str(self.root / "etc"),
                "OVS_PKGDATADIR": "/usr/share/openvswitch"}

    # ------------------------------------------------------------ lifecycle
    def start(self, *, vswitchd: bool = True) -> PrivateOvs:
        if not SCHEMA.exists():
            raise OvsError(f"{SCHEMA} missing: apt-get install openvswitch-switch "
                           "(scripts/setup.sh --test does)")
        if self.root.exists():
            shutil.rmtree(self.root)
        for d in ("run", "log", "etc"):
            (self.root / d).mkdir(parents=True)
        self._run(["ovsdb-tool", "create", str(self.db_file), str(SCHEMA)])
        try:
            self.start_db()
            self.vsctl("--no-wait", "init")
            if vswitchd:
                self.start_vswitchd()
        except BaseException:
            self.stop()
            raise
        return self

    def start_db(self, timeout: float = 15.0) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.db_proc = self._spawn("ovsdb-server", [
            "ovsdb-server", str(self.db_file), f"--remote=punix:{self.socket}",
            f"--unixctl={self.rundir / 'ovsdb-server.ctl'}",
            f"--log-file={self.root / 'log' / 'ovsdb-server.log'}", "-vconsole:off"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.db_proc.poll() is not None:
                raise OvsError(f"ovsdb-server exited {self.db_proc.returncode}:\n"
                               + self.log_tail("ovsdb-server"))
            if self.socket.exists():
                proc = subprocess.run(
                    ["ovsdb-client", "list-dbs", self.remote], capture_output=True, text=True,
                    timeout=10, check=False)
                if proc.returncode == 0:
                    return
            time.sleep(0.05)
        raise OvsError(f"ovsdb-server not ready after {timeout}s")

    def start_vswitchd(self, timeout: float = 15.0) -> None:
        self.vswitchd_proc = self._spawn("ovs-vswitchd", [
            "ovs-vswitchd", self.remote, f"--unixctl={self.rundir / 'ovs-vswitchd.ctl'}",
            f"--log-file={self.root / 'log' / 'ovs-vswitchd.log'}", "-vconsole:off"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.vswitchd_proc.poll() is not None:
                raise OvsError(f"ovs-vswitchd exited {self.vswitchd_proc.returncode}:\n"
                               + self.log_tail("ovs-vswitchd"))
            # It answers on its control socket once its main loop runs.
            proc = subprocess.run(["ovs-appctl", f"--target={self.rundir / 'ovs-vswitchd.ctl'}",
                                   "--timeout=2", "version"],
                                  capture_output=True, text=True, timeout=10, check=False)
            if proc.returncode == 0:
                return
            time.sleep(0.1)
        raise OvsError(f"ovs-vswitchd not ready after {timeout}s:\n"
                       + self.log_tail("ovs-vswitchd"))

    def stop_db(self) -> None:
        self._kill(self.db_proc)
        self.db_proc = None

    def stop_vswitchd(self) -> None:
        self._kill(self.vswitchd_proc)
        self.vswitchd_proc = None

    def stop(self) -> None:
        """Always: both daemons, then the log files (the directory stays for a post-mortem)."""
        try:
            self.stop_vswitchd()
        finally:
            self.stop_db()
            for f in self._logs:
                f.close()
            self._logs.clear()

    # ------------------------------------------------------------ checks
    def vsctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(["ovs-vsctl", f"--db={self.remote}", "--timeout=10", *args],
                         check=check)

    def log_tail(self, daemon: str, lines: int = 30) -> str:
        path = self.root / "log" / f"{daemon}.log"
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    # ------------------------------------------------------------ internals
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        out = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(out)
        # `ip netns exec` execs the daemon: the Popen pid is the daemon's own.
        return subprocess.Popen(["ip", "netns", "exec", self.netns, *argv],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **self.env}, start_new_session=True)

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                              env={**os.environ, **self.env})
        if check and proc.returncode != 0:
            raise OvsError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)


def private_ovs(root: Path, netns: str, *, vswitchd: bool = True) -> Iterator[PrivateOvs]:
    """Body of a fixture: start both daemons in `netns`, yield, always stop them."""
    ovs = PrivateOvs(root, netns)
    try:
        ovs.start(vswitchd=vswitchd)
        yield ovs
    finally:
        ovs.stop()
