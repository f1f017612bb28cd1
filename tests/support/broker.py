"""Control of the lab's private RabbitMQ from tests (wraps scripts/broker.sh).

Measured here: ``restart()`` (graceful stop + cold start) about 7 s,
``restart(app_only=True)`` (rabbitmqctl stop_app/start_app, VM stays up) about 1 s,
``kill()`` (SIGKILL) immediate; ``start()`` after a kill about 5 s.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.env import NOT_IN_LAB, REPO_ROOT, NotInLabError


@dataclass(frozen=True)
class LabBroker:
    netns: str  # VNETD_LAB_NETNS
    node: str  # VNETD_LAB_BROKER_NODE
    port: int  # VNETD_LAB_BROKER_PORT
    dist_port: int  # VNETD_LAB_BROKER_DIST_PORT
    base: Path  # VNETD_LAB_BROKER_BASE

    @classmethod
    def from_env(cls) -> LabBroker:
        try:
            return cls(
                netns=os.environ["VNETD_LAB_NETNS"],
                node=os.environ["VNETD_LAB_BROKER_NODE"],
                port=int(os.environ["VNETD_LAB_BROKER_PORT"]),
                dist_port=int(os.environ["VNETD_LAB_BROKER_DIST_PORT"]),
                base=Path(os.environ["VNETD_LAB_BROKER_BASE"]),
            )
        except KeyError as exc:
            raise NotInLabError(f"{NOT_IN_LAB} (missing {exc})") from None

    @property
    def log_path(self) -> Path:
        return self.base / "log" / f"{self.node}.log"

    def _cmd(self, command: str, *extra: str) -> list[str]:
        return [
            str(REPO_ROOT / "scripts" / "broker.sh"),
            command,
            "--netns",
            self.netns,
            "--base",
            str(self.base),
            "--node",
            self.node,
            "--port",
            str(self.port),
            "--dist-port",
            str(self.dist_port),
            *extra,
        ]

    def _run(
        self, command: str, *extra: str, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self._cmd(command, *extra), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"broker.sh {command} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    # synchronous API
    def start(self, timeout: float = 60.0) -> None:
        self._run("start", "--timeout", str(int(timeout)))

    def stop(self) -> None:
        self._run("stop")

    def kill(self) -> None:
        self._run("kill")

    def restart(self, *, app_only: bool = False) -> None:
        self._run("restart", *(["--app"] if app_only else []))

    def wait(self, timeout: float = 60.0) -> None:
        self._run("wait", "--timeout", str(int(timeout)))

    def is_up(self) -> bool:
        return self._run("status", check=False).returncode == 0

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl ARGS`` against the lab node; returns stdout."""
        return self._run("ctl", "--", *args, timeout=timeout).stdout

    # async API (the tests are asyncio): the same, off the event loop
    async def astart(self, timeout: float = 60.0) -> None:
        await asyncio.to_thread(self.start, timeout)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def akill(self) -> None:
        await asyncio.to_thread(self.kill)

    async def arestart(self, *, app_only: bool = False) -> None:
        await asyncio.to_thread(lambda: self.restart(app_only=app_only))

    async def ais_up(self) -> bool:
        return await asyncio.to_thread(self.is_up)

    async def actl(self, *args: str) -> str:
        return await asyncio.to_thread(self.ctl, *args)
