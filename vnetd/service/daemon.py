"""The daemon: wires config, backends, broker and consumer, and runs until told to stop."""

from __future__ import annotations

import asyncio
import signal

import structlog

from vnetd import __version__
from vnetd.amqp import topology
from vnetd.amqp.connection import BrokerLink
from vnetd.amqp.consumer import JobConsumer, JobObserver
from vnetd.amqp.dedupe import ReplyCache
from vnetd.config import Settings
from vnetd.handlers.context import Context
from vnetd.handlers.dispatch import Dispatcher
from vnetd.handlers.policy import Policy
from vnetd.handlers.registry import build_registry
from vnetd.net.netlink import NetlinkBackend
from vnetd.service.notify import Notifier

log = structlog.get_logger("vnetd")


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop_event = asyncio.Event()
        self.notifier = Notifier()
        self.broker = BrokerLink(
            settings.amqp.url.get_secret_value(), f"vnetd@{settings.host_id}",
            settings.amqp.reconnect_interval_seconds)
        self.components: dict[str, str] = {"broker": "disconnected", "libvirt": "disabled"}
        self.observers: list[JobObserver] = []
        self.consumer: JobConsumer | None = None
        self.net: NetlinkBackend | None = None

    def component_states(self) -> dict[str, str]:
        return {**self.components, "broker": self.broker.state}

    async def _policy(self, net: NetlinkBackend) -> Policy:
        p = self.settings.policy
        policy = Policy(attachable=p.attachable, protected=p.protected)
        if p.protect_default_route:
            policy = policy.with_protected(await net.default_route_interfaces())
        return policy

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        s = self.settings
        self.notifier.status("starting: opening netlink")
        self.net = net = NetlinkBackend(s.netlink.netns or None)
        try:
            policy = await self._policy(net)
            ctx = Context(host_id=s.host_id, net=net, policy=policy, version=__version__,
                          components=self.component_states)
            dispatcher = Dispatcher(build_registry(), ctx)
            self.notifier.status("starting: connecting to the broker")
            connection = await self.broker.connect()
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=s.amqp.prefetch)
            topo = await topology.declare(channel, s.host_id, s.amqp.delivery_limit)
            cache = ReplyCache(s.amqp.dedupe_window_seconds, s.amqp.dedupe_max_entries)
            self.consumer = JobConsumer(channel, topo.queue, dispatcher.execute, cache,
                                        s.host_id, self.observers)
            await self.consumer.start()
            log.info("ready", host_id=s.host_id, queue=topo.queue.name,
                     netns=s.netlink.netns or None, protected=list(policy.protected),
                     version=__version__)
            self.notifier.ready(f"ready: consuming {topo.queue.name}")
            await self.stop_event.wait()
            await self._shutdown()
        finally:
            await self.broker.close()
            await net.close()

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        if self.consumer is not None:
            await self.consumer.stop()
            left = await self.consumer.drain(self.settings.amqp.drain_timeout_seconds)
            if left:
                log.warning("drain_timeout", left_for_redelivery=left)
        log.info("stopped")
