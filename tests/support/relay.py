"""A TCP relay on a thread of its own: the lab broker, reachable from a sub-namespace.

The lab's RabbitMQ listens on the lab namespace's loopback only, and lets ``guest``
in from loopback only. A process in a sub-namespace joined to the lab by a veth
(the systemd-nspawn container of tests/integration/test_systemd_nspawn.py) reaches
it through this relay, bound to the veth's lab-side address: the broker sees
connections from 127.0.0.1, so the lab's ``guest`` URL works unchanged.

Runs its own event loop on a thread so that a test may block (subprocesses,
``systemctl`` calls) without stalling the daemon's broker traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class TcpRelay:
    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen = listen
        self.target = target
        self.connections = 0  # accepted so far (a test can see that the relay was used)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> TcpRelay:
        self._thread = threading.Thread(target=self._main, name="tcp-relay", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise RuntimeError(f"relay on {self.listen} did not start") from self._error
        if not self._started.is_set():
            raise RuntimeError(f"relay on {self.listen} did not start within 10 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    # ------------------------------------------------------------ on the relay's thread
    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await self._join(reader, writer)
            finally:
                tasks.discard(task)

        server = await asyncio.start_server(on_client, *self.listen)
        self._started.set()
        async with server:
            await self._stop.wait()
            server.close()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _join(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()  # one side gone: the other follows, as a direct connection would

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
