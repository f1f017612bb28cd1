"""The daemon: wires config, backends, broker and components; runs until told to stop."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from aio_pika.abc import AbstractRobustConnection

from vnetd import __version__
from vnetd.amqp import topology
from vnetd.amqp.connection import BrokerLink
from vnetd.amqp.consumer import JobConsumer, JobObserver
from vnetd.amqp.dedupe import ReplyCache
from vnetd.amqp.quarantine import FlightRecorder, Quarantine
from vnetd.amqp.renewing import RenewingPublisher
from vnetd.amqp.retry import RetryPolicy
from vnetd.amqp.tls import tls_context
from vnetd.config import Settings
from vnetd.contract.events import NullSink
from vnetd.handlers.context import Context
from vnetd.handlers.dispatch import Dispatcher
from vnetd.handlers.host import ComponentStates
from vnetd.handlers.policy import Policy
from vnetd.handlers.registry import build_registry
from vnetd.net.monitor import MonitorSocket
from vnetd.net.netlink import NetlinkBackend
from vnetd.ovs.backend import OvsOptions
from vnetd.ovs.idl import IdlBackend
from vnetd.service import failpoints
from vnetd.service.cleanup import CleanupComponent
from vnetd.service.component import Component
from vnetd.service.events import event_components
from vnetd.service.metrics import MetricsServer
from vnetd.service.notify import Notifier
from vnetd.service.watchdog import Watchdog
from vnetd.supervisor import TaskTree
from vnetd.virt.libvirt_backend import LibvirtBackend
from vnetd.watchers.libvirt import LibvirtWatcher
from vnetd.watchers.netlink import NetlinkWatcher
from vnetd.watchers.ovs import OvsWatcher

log = structlog.get_logger("vnetd")

ABANDON_TIMEOUT = 5.0
"""After a drain timeout: how long the cancelled jobs may take to end (a batch lets
the commands it has started finish)."""


@dataclass
class Runtime:
    """What components are built from: the shared, already-started parts."""

    settings: Settings
    ctx: Context
    net: NetlinkBackend
    broker: BrokerLink
    connection: AbstractRobustConnection
    notifier: Notifier
    observers: list[JobObserver] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)
    """Component states reported by host.health ("connected", "degraded", ...)."""
    consumer_alive: Callable[[], bool | None] = lambda: None
    """None until the job consumer is started, then whether it still consumes."""
    dispatcher: Dispatcher | None = None
    """Runs jobs; its per-name locks and leases are shared with cleanup."""
    tasks: TaskTree = field(default_factory=TaskTree)
    """The daemon's task tree: each component's long-lived tasks are a branch of it."""

    def dependency_states(self) -> dict[str, str]:
        return {**self.states, "broker": self.broker.state}

    def health_states(self) -> dict[str, str]:
        """Dependencies, and the tasks that ended unexpectedly ("<path>": "<state>: <why>")."""
        return {**self.dependency_states(), **task_states(self.tasks)}


def task_states(tasks: TaskTree) -> dict[str, str]:
    """Failed or restarting tasks as component states; none while all run."""
    return {e.path: f"{e.state}: {e.reason}" for e in tasks.entries() if not e.ok}


def build_components(rt: Runtime) -> list[Component]:
    """Everything the daemon runs besides the consumer, in start order."""
    s = rt.settings
    watchdog = Watchdog(rt.notifier, rt.health_states, rt.consumer_alive, rt.tasks.critical)
    # Events first: they set ctx.events, which later components emit to.
    events = event_components(rt)
    metrics = MetricsServer(enabled=s.metrics.enabled, address=s.metrics.address,
                            port=s.metrics.port, states=rt.dependency_states)
    if s.metrics.enabled:
        rt.observers.append(metrics.observer)
        events = owned_counts_from_watcher(metrics, events, s)
    components: list[Component] = [watchdog, metrics, *events, *_libvirt_components(rt),
                                   *_ovs_components(rt)]
    if rt.dispatcher is not None:
        cleanup = CleanupComponent(s.cleanup, rt.ctx, rt.dispatcher,
                                   libvirt_enabled=s.libvirt.enabled)
        rt.ctx.cleanup = cleanup.sweeper  # for cleanup.run
        components.append(cleanup)
    return components


def owned_counts_from_watcher(metrics: MetricsServer, events: list[Component],
                              s: Settings) -> list[Component]:
    """Point the owned-device gauges at the netlink watcher's view; with events off,
    add a watcher of its own that emits nowhere (the counts without a link dump)."""
    watcher = next((c for c in events if isinstance(c, NetlinkWatcher)), None)
    if watcher is None:
        watcher = NetlinkWatcher(MonitorSocket(s.netlink.netns or None, s.netlink.rcvbuf_bytes),
                                 NullSink())
        events = [*events, watcher]
    metrics.owned = watcher.owned_counts
    return events


def _libvirt_components(rt: Runtime) -> list[Component]:
    """The libvirt watcher, and handlers' ctx.virt and snapshot part, when `[libvirt] enabled`."""
    lv = rt.settings.libvirt
    if not lv.enabled:
        return []
    backend = LibvirtBackend(lv.uri, adopt_unowned=lv.adopt_unowned)
    watcher = LibvirtWatcher(backend, rt.ctx, rt.states,
                             reconnect_max_seconds=lv.reconnect_max_seconds)
    rt.ctx.virt = backend
    rt.ctx.snapshot_parts += (watcher.snapshot,)
    return [watcher]


def _ovs_components(rt: Runtime) -> list[Component]:
    """The OVS watcher (it also gives handlers ctx.ovs) when `[ovs] enabled`."""
    o = rt.settings.ovs
    if not o.enabled:
        return []
    backend = IdlBackend(o.db, apply_timeout=o.apply_timeout_seconds,
                         probe_interval=o.probe_interval_seconds)
    options = OvsOptions(datapath_type=o.datapath_type, foreign_bridges=o.foreign_bridges)
    rt.ctx.ovs, rt.ctx.ovs_options = backend, options
    return [OvsWatcher(backend, rt.ctx, rt.states, options)]


def _quarantine(s: Settings) -> Quarantine:
    """The crash quarantine, or none when its state directory cannot be written."""
    if s.amqp.quarantine_after_crashes == 0:
        return Quarantine(None, 0)
    try:
        recorder = FlightRecorder(Path(s.amqp.state_dir) / s.host_id)
        return Quarantine(recorder, s.amqp.quarantine_after_crashes)
    except OSError as exc:
        log.warning("quarantine_disabled", state_dir=s.amqp.state_dir, error=str(exc))
        return Quarantine(None, 0)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop_event = asyncio.Event()
        self.notifier = Notifier()
        self.broker = BrokerLink(
            settings.amqp.broker_urls(), f"vnetd@{settings.host_id}",
            settings.amqp.reconnect_interval_seconds, tls_context(settings.amqp))
        # ComponentStates: also since when, and the last error, for host.health's reasons.
        self.states: dict[str, str] = ComponentStates({"libvirt": "disabled"})
        self.consumer: JobConsumer | None = None
        self.tasks = TaskTree()
        self.components: list[Component] = []
        self.started: list[Component] = []

    def consumer_alive(self) -> bool | None:
        c = self.consumer
        if c is None or c.stopping:
            return None  # not started yet, or stopping by design
        return not c.channel.is_closed

    def component_states(self) -> dict[str, str]:
        return {**self.states, "broker": self.broker.state, **task_states(self.tasks)}

    def component_details(self) -> dict[str, dict[str, object]]:
        states = self.states
        return states.details() if isinstance(states, ComponentStates) else {}

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
        failpoints.install_task_crash(loop, self.tasks.crash)
        s = self.settings
        self.notifier.status("starting: opening netlink")
        net = NetlinkBackend(s.netlink.netns or None)
        try:
            ctx = Context(host_id=s.host_id, net=net, policy=await self._policy(net),
                          version=__version__, components=self.component_states,
                          component_details=self.component_details,
                          broker_node=lambda: self.broker.node)
            self.notifier.status("starting: connecting to the broker")
            connection = await self.broker.connect()
            rt = Runtime(settings=s, ctx=ctx, net=net, broker=self.broker,
                         connection=connection, notifier=self.notifier, states=self.states,
                         consumer_alive=self.consumer_alive,
                         dispatcher=Dispatcher(build_registry(), ctx), tasks=self.tasks)
            for component in build_components(rt):
                self.notifier.status(f"starting: {component.name}")
                # A component's long-lived tasks (its own TaskTree) join the daemon's.
                branch = getattr(component, "tasks", None)
                if isinstance(branch, TaskTree):
                    self.tasks.adopt(branch)
                await component.start()
                self.started.append(component)
            await self._start_consumer(rt)
            owned = sum(1 for link in await net.list_links() if link.owned)
            # What start-up built lives as long as the daemon: out of the collector's
            # way, a full collection walks only what came after (was 90-170 ms every
            # few seconds at 10,000-20,000 events/s, the watcher's socket unread meanwhile).
            gc.collect()
            gc.freeze()
            self.notifier.ready(f"ready: consuming jobs for {s.host_id}, {owned} owned devices")
            log.info("ready", host_id=s.host_id, netns=s.netlink.netns or None,
                     protected=list(ctx.policy.protected), version=__version__)
            await self.stop_event.wait()
            await self._shutdown()
        finally:
            for component in reversed(self.started):
                await component.stop()
            await self.broker.close()
            await net.close()

    async def _start_consumer(self, rt: Runtime) -> None:
        s = rt.settings
        channel = await rt.connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=s.amqp.prefetch)
        topo = await topology.declare(channel, s.host_id, s.amqp.delivery_limit,
                                      s.amqp.quorum_initial_group_size)
        dispatcher = rt.dispatcher or Dispatcher(build_registry(), rt.ctx)
        cache = ReplyCache(s.amqp.dedupe_window_seconds, s.amqp.dedupe_max_entries)
        retry_policy = RetryPolicy(queue=topo.retry_queue.name,
                                   delay_seconds=s.amqp.retry_delay_seconds,
                                   attempts=s.amqp.retry_attempts)
        self.consumer = JobConsumer(channel, topo.queue, dispatcher.execute, cache,
                                    s.host_id, rt.observers, _quarantine(s), retry_policy,
                                    allowed_senders=frozenset(s.amqp.allowed_senders),
                                    aside=RenewingPublisher(
                                        lambda: rt.connection.channel(publisher_confirms=True)))
        await self.consumer.start()

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        if self.consumer is not None:
            await self.consumer.stop()
            left = await self.consumer.drain(self.settings.amqp.drain_timeout_seconds)
            if left:
                log.warning("drain_timeout", left_for_redelivery=left)
                # Ended here, unacked (redelivered), not by the connection's close.
                still = await self.consumer.abandon(ABANDON_TIMEOUT)
                if still:
                    log.warning("jobs_not_ended", left=still)
            self.consumer.quarantine.close_clean()
        log.info("stopped")
