"""The broker connection: robust (reconnects and restores consumers), observable."""

from __future__ import annotations

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustConnection

log = structlog.get_logger("vnetd.amqp")


class BrokerLink:
    """Owns the robust connection and tracks its state for health and metrics."""

    def __init__(self, url: str, name: str, reconnect_interval: float) -> None:
        self.url = url
        self.name = name
        self.reconnect_interval = reconnect_interval
        self.connection: AbstractRobustConnection | None = None
        self.state = "disconnected"

    async def connect(self) -> AbstractRobustConnection:
        self.state = "connecting"
        connection = await aio_pika.connect_robust(
            self.url,
            reconnect_interval=self.reconnect_interval,
            client_properties={"connection_name": self.name},
        )
        connection.reconnect_callbacks.add(self._on_reconnect)
        connection.close_callbacks.add(self._on_close)
        self.connection = connection
        self.state = "connected"
        return connection

    def _on_reconnect(self, *_: object) -> None:
        self.state = "connected"
        log.info("broker_reconnected")

    def _on_close(self, _conn: object, exc: BaseException | None = None) -> None:
        if self.connection is not None and not self.connection.is_closed:
            return
        self.state = "reconnecting" if exc is not None else "disconnected"
        log.warning("broker_connection_lost", error=str(exc) if exc else None)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        self.state = "disconnected"
