"""The daemon under test as a subprocess: ``vnetd run --config <file>``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any

from tests.support import toml
from tests.support.env import REPO_ROOT
from tests.support.rpc import RawRpc

_counter = itertools.count(1)


class DaemonError(RuntimeError):
    pass


def vnetd_executable() -> str:
    cand = Path(sys.executable).parent / "vnetd"  # the venv running pytest
    if cand.exists():
        return str(cand)
    return str(REPO_ROOT / ".venv" / "bin" / "vnetd")


def default_config(*, host_id: str, amqp_url: str, netns: str) -> dict[str, Any]:
    return {
        "host_id": host_id,
        "amqp": {
            "url": amqp_url,
            "prefetch": 128,
            "delivery_limit": 5,
            "dedupe_window_seconds": 600,
        },
        "netlink": {"netns": netns},
        "libvirt": {"enabled": False, "uri": "qemu:///system"},
        "policy": {"attachable": [], "protected": ["lo"]},
        "log": {"format": "json", "level": "info"},
    }


class DaemonProcess:
    """One vnetd process. ``config`` = defaults deep-merged with ``extra``.

    Files live in ``workdir``: ``config.toml`` and ``daemon.log`` (stdout+stderr,
    appended across restarts).
    """

    def __init__(
        self,
        *,
        host_id: str,
        amqp_url: str,
        netns: str,
        workdir: Path,
        extra: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.host_id = host_id
        self.amqp_url = amqp_url
        self.netns = netns
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        base = default_config(host_id=host_id, amqp_url=amqp_url, netns=netns)
        base["amqp"]["state_dir"] = str(self.workdir / "state")  # survives restarts, per daemon
        self.config: dict[str, Any] = toml.deep_merge(base, extra)
        self.config_path = self.workdir / "config.toml"
        self.log_path = self.workdir / "daemon.log"
        self.env = dict(env or {})
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    @staticmethod
    def new_host_id(suffix: str) -> str:
        return f"t-{suffix}-{next(_counter)}"

    # ------------------------------------------------------------ state
    @property
    def pid(self) -> int:
        if self.proc is None:
            raise DaemonError("daemon not started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def write_config(self) -> Path:
        self.config_path.write_text(toml.dumps(self.config))
        return self.config_path

    # ------------------------------------------------------------ lifecycle
    async def start(self, *, wait_ready: bool = True) -> DaemonProcess:
        if self.running:
            raise DaemonError(f"daemon {self.host_id} already running (pid {self.pid})")
        self.write_config()
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop/kill
        self.starts += 1
        self._log.write(f"---- vnetd start #{self.starts} ({self.host_id}) ----\n".encode())
        self._log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(
            [vnetd_executable(), "run", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
        )
        if wait_ready:
            try:
                await self.wait_ready()
            except BaseException:
                await self.stop(timeout=5.0)
                raise
        return self

    async def wait_ready(self, timeout: float | None = None) -> dict[str, Any]:
        """Poll ``host.health`` through the raw contract until an ok reply arrives."""
        timeout = self.ready_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: object = None
        async with RawRpc(self.amqp_url) as rpc:
            while True:
                if not self.running:
                    raise DaemonError(
                        f"vnetd {self.host_id} exited with {self.returncode} before it was "
                        f"ready; log tail:\n{self.log_tail()}"
                    )
                try:
                    return await rpc.wait_ok(self.host_id, timeout=0.0, per_call_timeout=1.0)
                except TimeoutError as exc:
                    last = exc
                if loop.time() >= deadline:
                    raise DaemonError(
                        f"vnetd {self.host_id} not ready after {timeout}s ({last}); "
                        f"log tail:\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.2)

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL after ``timeout``. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                self._log_note(f"did not exit {timeout}s after SIGTERM: SIGKILL")
                self._signal(signal.SIGKILL)
                await asyncio.to_thread(self.proc.wait)
        self._close_log()
        return self.proc.returncode

    async def kill(self) -> int | None:
        """SIGKILL (a crash: no cleanup, no acks)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait)
        self._close_log()
        return self.proc.returncode

    async def restart(self, *, wait_ready: bool = True) -> DaemonProcess:
        await self.stop()
        return await self.start(wait_ready=wait_ready)

    def send_signal(self, sig: int) -> None:
        self._signal(sig)

    # ------------------------------------------------------------ internals
    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def _log_note(self, text: str) -> None:
        if self._log is not None and not self._log.closed:
            self._log.write(f"---- test harness: {text} ----\n".encode())
            self._log.flush()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


DaemonFactory = Callable[..., Awaitable[DaemonProcess]]
"""A fixture's ``await start(netns, ...)`` that returns a started daemon."""
