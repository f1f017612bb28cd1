"""The broker connection: robust (reconnects and restores consumers) over several addresses.

aio-pika's `connect_robust` takes one URL (aio-pika #141): a daemon pinned to a
cluster node that died would retry that node for ever. `ClusterConnection`
keeps aio-pika's restore machinery (channels, queues, consumers are declared
again on the new connection; the reconnect test and the cluster tests prove
it) and changes only where and when it reconnects: every attempt goes to the
next address of the list, after a jittered exponential backoff, so a fleet
that lost a node does not reconnect to the survivors in lockstep.

Delivery tags belong to the channel they came on: an ack of a job delivered
before the loss fails (aio-pika acks on the old, closed aiormq channel), the
broker has already requeued it, and its redelivery is answered from the
dedupe cache. Nothing here tries to carry acks over.
"""

from __future__ import annotations

import contextlib
import random
import ssl
from collections.abc import Sequence
from typing import Any, cast

import structlog
from aio_pika.abc import AbstractRobustConnection
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from vnetd.amqp.tls import explain

log = structlog.get_logger("vnetd.amqp")

MAX_BACKOFF_SECONDS = 30.0


def address_of(url: URL | str) -> str:
    """host:port of a broker URL, without credentials (for health and logs)."""
    u = URL(str(url))
    port = u.explicit_port or (5671 if u.scheme == "amqps" else 5672)
    return f"{u.host}:{port}"


class ClusterConnection(RobustConnection):
    """A RobustConnection that walks a list of broker URLs.

    The hooks are the two attributes aio-pika's reconnect loop reads on every
    attempt: it sets `transport = None` right before it connects to `self.url`
    (we move `self.url` to the next address there), and sleeps
    `reconnect_interval` after a failed attempt (we make that a jittered
    backoff that grows with consecutive failures).
    """

    urls: tuple[URL, ...] = ()

    def __init__(self, url: URL, *args: Any, **kwargs: Any) -> None:
        self._index = -1
        self._failures = 0
        self._base_interval = 1.0
        self.connected_url: URL | None = None
        self.connects = 0
        super().__init__(url, *args, **kwargs)
        self._index = -1  # Connection.__init__ moved it: the first attempt is urls[0]

    # -- hook 1: each attempt goes to the next address
    @property
    def transport(self) -> Any:
        return self.__dict__.get("_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        if value is None and self.urls and not getattr(self, "_close_called", False):
            self._index = (self._index + 1) % len(self.urls)
            self.url = self.urls[self._index]
        self.__dict__["_transport"] = value

    # -- hook 2: the pause after a failed attempt
    @property
    def reconnect_interval(self) -> float:
        # A full round of the list fails before the backoff grows: one dead node
        # must not delay the move to a live one.
        rounds = self._failures // max(1, len(self.urls))
        self._failures += 1
        ceiling = min(MAX_BACKOFF_SECONDS, self._base_interval * 2.0 ** min(rounds, 6))
        return random.uniform(0.5, 1.0) * ceiling  # noqa: S311 - jitter, not crypto

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._base_interval = float(value)

    async def _on_connected(self) -> None:
        # Before aio-pika restores channels and calls the reconnect callbacks,
        # which report the node.
        self.connected_url = self.url
        await super()._on_connected()
        self._failures = 0
        self.connects += 1
        log.info("broker_connected", address=address_of(self.url), connects=self.connects)


async def connect_cluster(urls: Sequence[str], *, reconnect_interval: float = 1.0,
                          name: str = "vnetd", timeout: float | None = None,
                          ssl_context: ssl.SSLContext | None = None) -> ClusterConnection:
    """A robust connection to the first of `urls` that answers.

    The first connect tries each address once, in order, and raises the last
    error when none answers (a start against a dead cluster fails clearly);
    later losses are retried for ever, walking the list.
    """
    if not urls:
        raise ValueError("no broker URL given")
    parsed = tuple(URL(u) for u in urls)
    last: BaseException | None = None
    for first in range(len(parsed)):
        rotated = parsed[first:] + parsed[:first]  # reconnects go on from the next one
        cls = cast(type[ClusterConnection],
                   type("ClusterConnection", (ClusterConnection,), {"urls": rotated}))
        conn = cls(rotated[0], reconnect_interval=reconnect_interval, ssl_context=ssl_context,
                   client_properties={"connection_name": name})
        try:
            await conn.connect(timeout=timeout)
            return conn
        except Exception as exc:  # noqa: BLE001 - try the next address; the last is raised
            log.warning("broker_unreachable", address=address_of(rotated[0]), error=repr(exc))
            last = exc
            await _close_quietly(conn)
    raise last if last is not None else ValueError("no broker URL given")


async def _close_quietly(conn: AbstractRobustConnection) -> None:
    with contextlib.suppress(Exception):  # closing a connection that never opened
        await conn.close()


class BrokerLink:
    """Owns the cluster connection and tracks its state for health and metrics."""

    def __init__(self, urls: str | Sequence[str], name: str, reconnect_interval: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.ssl_context = ssl_context
        self.name = name
        self.reconnect_interval = reconnect_interval
        self.connection: ClusterConnection | None = None
        self.state = "disconnected"

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def node(self) -> str | None:
        """host:port of the broker node this daemon is connected to, None while it is not."""
        c = self.connection
        if c is None or c.connected_url is None or self.state != "connected":
            return None
        return address_of(c.connected_url)

    async def connect(self) -> AbstractRobustConnection:
        self.state = "connecting"
        try:
            connection = await connect_cluster(
                self.urls, reconnect_interval=self.reconnect_interval, name=self.name,
                ssl_context=self.ssl_context)
        except Exception as exc:
            self.state = "disconnected"
            if (tls := explain(exc)) is not None:
                where = ", ".join(address_of(u) for u in self.urls)
                raise type(tls)(f"{tls} [broker {where}]") from exc
            raise
        connection.reconnect_callbacks.add(self._on_reconnect)
        connection.close_callbacks.add(self._on_close)
        self.connection = connection
        self.state = "connected"
        return connection

    def _on_reconnect(self, *_: object) -> None:
        self.state = "connected"
        log.info("broker_reconnected", node=self.node)

    def _on_close(self, _conn: object, exc: BaseException | None = None) -> None:
        if self.connection is not None and not self.connection.is_closed:
            self.state = "reconnecting"
            log.warning("broker_connection_lost", error=str(exc) if exc else None)
            return
        self.state = "disconnected"

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        self.state = "disconnected"


__all__ = ["BrokerLink", "ClusterConnection", "address_of", "connect_cluster"]
