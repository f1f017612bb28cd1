"""A private libvirtd for the test session: own network namespace, own mount namespace.

It owns nothing of the machine: /etc/libvirt is a copy with every network definition
removed, /var/lib/libvirt, /var/log/libvirt and /run/libvirt are bind mounts of
directories under the lab dir (in a mount namespace of its own, so the host never sees
them), the socket lives in ``<dir>/sock/libvirt-sock``, and it runs inside a ``vt-<suffix>-N``
network namespace, so bridges, nftables rules and dnsmasq appear only there. Clients use
``qemu:///system?socket=<dir>/sock/libvirt-sock``; the machine's default socket is never used.
Its qemu.conf is set up for real guests (``<domain type='qemu'>``, see tests/support/guest.py).

/run/libvirt is a bind mount (not a tmpfs) so that network status survives a libvirtd
restart (``restart()``), as it does on a real host.

Teardown (``stop()``) always kills libvirtd and every process left in its namespace
(dnsmasq) and deletes the namespace, also when start failed half-way.
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

from tests.support import netns as netns_mod

_SETUP = r"""
set -e
mount --make-rprivate /
mount --bind "$R/lib" /var/lib/libvirt
mount --bind "$R/log" /var/log/libvirt
mount --bind "$R/etc" /etc/libvirt
mkdir -p /run/libvirt
mount --bind "$R/run" /run/libvirt
exec ip netns exec "$NS" /usr/sbin/libvirtd --config "$R/etc/libvirtd.conf" \
    --pid-file "$R/libvirtd.pid"
"""


class LibvirtdError(RuntimeError):
    pass


class PrivateLibvirtd:
    def __init__(self, root: Path, netns: str | None = None) -> None:
        self.root = Path(root)
        self.netns = netns or ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    # ------------------------------------------------------------ facts
    @property
    def socket(self) -> Path:
        return self.root / "sock" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    @property
    def log_path(self) -> Path:
        return self.root / "libvirtd.out"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------ set-up
    def _prepare(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        for d in ("lib", "log", "run", "sock"):
            (self.root / d).mkdir(parents=True)
        etc = self.root / "etc"
        shutil.copytree("/etc/libvirt", etc, symlinks=True)
        nets = etc / "qemu" / "networks"
        if nets.exists():
            shutil.rmtree(nets)  # no default network, no autostart links
        (nets / "autostart").mkdir(parents=True)
        for dom in (etc / "qemu").glob("*.xml"):  # nor the machine's domains
            dom.unlink()
        shutil.rmtree(etc / "qemu" / "autostart", ignore_errors=True)
        for sub in ("network", "qemu", "dnsmasq"):
            (self.root / "lib" / sub).mkdir(parents=True, exist_ok=True)
        qemu_conf = etc / "qemu.conf"
        qemu_text = qemu_conf.read_text() if qemu_conf.exists() else ""
        # Guests (tests/support/guest.py) under this libvirtd: no virtlogd here, so QEMU's
        # stdio goes to a file; no AppArmor/DAC relabelling and no cgroups (no systemd
        # here); QEMU runs as root so it can open TAPs vnetd made and read the image.
        qemu_conf.write_text(
            qemu_text
            + '\nstdio_handler = "file"\n'
            + 'security_driver = "none"\n'
            + "cgroup_controllers = [ ]\n"
            + 'user = "root"\n'
            + 'group = "root"\n'
        )
        conf = etc / "libvirtd.conf"
        text = conf.read_text() if conf.exists() else ""
        conf.write_text(
            text
            + f'\nunix_sock_dir = "{self.root / "sock"}"\n'
            + 'log_outputs = "3:stderr"\n'
            + "keepalive_interval = 5\n"
        )

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            raise LibvirtdError("libvirtd already running")
        if not self.netns:
            self.netns = netns_mod.create()
        if self.starts == 0:
            self._prepare()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in kill()
        self.starts += 1
        self._log.write(f"---- libvirtd start #{self.starts} ----\n".encode())
        self._log.flush()
        env = {**os.environ, "R": str(self.root), "NS": self.netns}
        self.proc = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", _SETUP],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.running:
                raise LibvirtdError(f"libvirtd exited ({self.proc and self.proc.returncode}):\n"
                                    + self.log_tail())
            if self.socket.exists():
                proc = subprocess.run(["virsh", "-q", "-c", self.uri, "net-list", "--all"],
                                      capture_output=True, text=True, timeout=10, check=False)
                if proc.returncode == 0:
                    return
                last = proc.stderr
            time.sleep(0.1)
        raise LibvirtdError(f"libvirtd not ready after {timeout}s: {last}\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------ teardown / restart
    def kill(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop libvirtd only (dnsmasq and the namespace stay, as on a real restart)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, down_seconds: float = 0.0) -> None:
        self.kill()
        if down_seconds:
            time.sleep(down_seconds)
        self.start()

    def stop(self) -> None:
        """Always: kill libvirtd, every process left in its namespace, the namespace."""
        try:
            self.kill()
        finally:
            if self.netns:
                netns_mod.delete(self.netns)

    # ------------------------------------------------------------ helpers for checks
    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["virsh", "-q", "-c", self.uri, *args], capture_output=True,
                              text=True, timeout=30, check=False)
        if check and proc.returncode != 0:
            raise LibvirtdError(f"virsh {' '.join(args)}: {proc.stderr.strip()}")
        return proc


def session_libvirtd(root: Path) -> Iterator[PrivateLibvirtd]:
    """Body of a (module- or session-scoped) fixture: start, yield, always stop."""
    d = PrivateLibvirtd(root)
    try:
        d.start()
        yield d
    finally:
        d.stop()
