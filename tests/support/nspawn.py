"""A real systemd, booted in a systemd-nspawn container inside a test namespace.

The container's tree is an overlay whose lower layer is the machine's ``/`` and whose
upper layer is a private directory under the lab dir: the container sees the host's
files (Python, systemd, this checkout and its .venv) and everything it writes
(/opt/vnetd, /etc/vnetd, units, its journal) lands in the upper layer, which
:meth:`Container.close` deletes. The host's files are never written.

How it is started, and why (each one found by trying on this machine):

- ``unshare --mount`` with private propagation: the overlay mount, a cgroup2 mount
  and a tmpfs on /run/systemd exist only for the container's life and are never seen
  by the rest of the machine. /run is not a tmpfs here, so nspawn's own runtime
  state (/run/systemd/nspawn/) would otherwise land on the host's disk.
- A fresh ``cgroup2`` on /sys/fs/cgroup: the tests run under ``ip netns exec``,
  which mounts a new sysfs without any cgroup file system, and nspawn refuses to
  start without one ("Failed to determine whether the unified cgroups hierarchy is
  used"). Unified is what a Debian 12 host runs.
- ``--register=no --keep-unit``: there is no systemd (nor machined) as PID 1 here.
- ``--network-namespace-path=/run/netns/NS``: the container lives in a test
  namespace; it does not get CAP_NET_ADMIN from that (only ``--private-network``
  grants it), hence ``--capability=CAP_NET_ADMIN``, which a host's PID 1 has.
- ``systemd.unit=basic.target``: the host image has rabbitmq-server, libvirtd and
  openvswitch enabled in multi-user.target; booting that would start copies of them
  in the container. Units a test needs are started explicitly.
- ``--console=pipe`` shows nothing useful; the journal is read with ``journalctl``
  inside the container instead.

Control: ``nsenter -t <container's PID 1> -a`` runs ``systemctl`` and ``journalctl``
in every namespace of the container (they talk to its PID 1 over its private
socket), with a clean environment.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs inside `unshare --mount`; $1 = the container's directory (upper/ work/ root/).
_START = r"""
set -eu
mount --make-rprivate /
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /run/systemd
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mount -t overlay overlay -o "lowerdir=/,upperdir=$1/upper,workdir=$1/work" "$1/root"
shift
exec "$@"
"""


class ContainerError(RuntimeError):
    pass


def _ns_inode(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


class Container:
    """One booted container; see the module docstring. Use as a context manager."""

    def __init__(self, *, name: str, netns: str, base: Path) -> None:
        self.name = name  # machine name and hostname
        self.netns = netns
        self.base = base
        self.console_log = base / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0  # the container's PID 1, as the host sees it

    # ------------------------------------------------------------ lifecycle
    def boot(self, timeout: float = 60.0) -> Container:
        for d in ("upper", "work", "root"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        nspawn = [
            "systemd-nspawn", "--quiet", "-D", str(self.base / "root"), "-M", self.name,
            "--register=no", "--keep-unit", "--boot", "--console=pipe",
            f"--network-namespace-path=/run/netns/{self.netns}",
            "--capability=CAP_NET_ADMIN",
            "systemd.unit=basic.target",
        ]
        with open(self.console_log, "ab") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--",
                 "sh", "-c", _START, "start", str(self.base), *nspawn],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            self.leader = self._wait(self._find_leader, timeout, "the container's PID 1")
            # Commands run through nsenter write into the container's tree (the
            # overlay): refuse if this PID does not live in namespaces of its own.
            if _ns_inode(self.leader, "mnt") == _ns_inode("self", "mnt"):
                raise ContainerError(f"PID {self.leader} shares our mount namespace")
            if _ns_inode(self.leader, "net") != os.stat(f"/run/netns/{self.netns}").st_ino:
                raise ContainerError(f"PID {self.leader} is not in namespace {self.netns}")
            # `is-system-running --wait` returns once the boot is over (running or
            # degraded); before PID 1 listens it fails at once: retry.
            self._wait(self._boot_finished, timeout, "the end of the container's boot")
        except BaseException:
            self.close()
            raise
        return self

    def _find_leader(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited {self.proc.returncode}: "
                                 f"{self.console_tail()}")
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return None
        for pid in map(int, children.split()):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return pid
        return None

    def _boot_finished(self) -> bool | None:
        proc = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=60)
        return True if proc.stdout.strip() in ("running", "degraded") else None

    def close(self, timeout: float = 30.0) -> None:
        """Halt the container (SIGTERM to nspawn: PID 1 shuts down), SIGKILL after
        ``timeout``; then delete its upper and work layers."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # Killing nspawn alone would orphan the container: kill its PID 1,
                # which takes the whole PID namespace down with it.
                for pid in (self.leader, proc.pid):
                    if pid:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                proc.wait(10)
        self.proc = None
        self._remove_tree()

    def _remove_tree(self) -> None:
        root = self.base / "root"
        # The overlay is mounted only in the container's own mount namespace: here
        # root/ must be an empty directory. Never walk it if it is not.
        if root.exists():
            if os.path.ismount(root) or any(root.iterdir()):
                raise ContainerError(f"{root} is still mounted or not empty: left in place")
            root.rmdir()
        for d in ("upper", "work"):
            shutil.rmtree(self.base / d, ignore_errors=True)
        self.console_log.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.base.rmdir()

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ commands inside
    def run(self, *cmd: str, check: bool = True, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in every namespace of the container (as root, clean environment)."""
        if not self.leader:
            raise ContainerError("container not booted")
        env = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "HOME": "/root",
               "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_URLIFY": "0"}
        # No --wd=DIR: nsenter opens DIR before it enters the mount namespace, i.e.
        # the host's directory, not the container's view of it. Scripts `cd` instead.
        full = ["nsenter", "-t", str(self.leader), "-a", "--", *cmd]
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                              input=input, env=env, check=False)
        if check and proc.returncode != 0:
            raise ContainerError(f"{' '.join(cmd)} exited {proc.returncode} in the container:\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    def sh(self, script: str, *, cwd: str = "/", timeout: float = 120.0) -> str:
        """Run a shell script (``sh -e -x``) in the container; its output, trace included."""
        proc = self.run("sh", "-e", "-x", "-c", f"cd {shlex.quote(cwd)}\n{script}",
                        check=False, timeout=timeout)
        if proc.returncode != 0:
            raise ContainerError(f"script exited {proc.returncode} in the container:\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc.stdout + proc.stderr

    def systemctl(self, *args: str, timeout: float = 120.0) -> str:
        return self.run("systemctl", *args, timeout=timeout).stdout

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *match: str, lines: int = 200) -> str:
        """``journalctl -b -o cat`` with matches (e.g. ``-u``, ``vnetd.service``)."""
        return self.run("journalctl", "-b", "--no-pager", "-o", "short-monotonic",
                        "-n", str(lines), *match, check=False).stdout

    def console_tail(self, lines: int = 30) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, probe: Callable[[], T | None], timeout: float, what: str) -> T:
        return self._wait(probe, timeout, what)

    @staticmethod
    def _wait(probe: Callable[[], T | None], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value is not None and value is not False:
                return value
            if time.monotonic() > deadline:
                raise ContainerError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.1)
