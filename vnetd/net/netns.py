"""A worker thread that lives inside a network namespace.

`setns(2)` moves only the calling thread, and file descriptors keep the
namespace they were opened in, so one dedicated thread is enough to do the
work rtnetlink cannot (opening /dev/net/tun, writing per-device sysctls) in the
target namespace at full speed, without forking a helper per call.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"


def _enter(netns: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(os.path.join(NETNS_RUN_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {netns!r}: {os.strerror(err)}")
    finally:
        os.close(fd)


class NamespaceWorker:
    """Runs blocking callables on one thread that has entered `netns` (or stays put)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns or None
        if self.netns is not None and not os.path.exists(os.path.join(NETNS_RUN_DIR, self.netns)):
            raise FileNotFoundError(f"network namespace {self.netns!r} does not exist")
        initializer = (lambda: _enter(self.netns)) if self.netns else None  # type: ignore[arg-type]
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="vnetd-netns", initializer=initializer
        )

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` on the worker and wait (for set-up, before the loop needs it)."""
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
