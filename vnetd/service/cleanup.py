"""The cleanup component: the daemon's Sweeper, and its periodic sweep.

It builds the one Sweeper of the daemon (so `cleanup.run` jobs, the periodic
sweep and `vnetd cleanup` share its grace clocks), sharing the dispatcher's
per-name locks and job leases. With `[cleanup] interval_seconds = 0` there is
no periodic sweep, but cleanup.run still works.

`sweeper_for` builds the same Sweeper for a one-shot local run (no daemon).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aio_pika
import structlog

from vnetd import __version__
from vnetd.client import CallTimeout, VnetClient
from vnetd.config import Settings
from vnetd.config.settings import CleanupSettings
from vnetd.contract.errors import VnetdError
from vnetd.contract.events import EventSink
from vnetd.handlers.cleanup import ReferenceSource, Rules, Sweeper
from vnetd.handlers.context import Context
from vnetd.handlers.dispatch import Dispatcher, KeyedLocks
from vnetd.handlers.leases import Leases
from vnetd.handlers.policy import Policy
from vnetd.net.backend import NetBackend
from vnetd.net.netlink import NetlinkBackend
from vnetd.supervisor import TaskTree
from vnetd.virt.backend import VirtError
from vnetd.virt.libvirt_backend import LibvirtBackend
from vnetd.virt.references import LibvirtNetworkTtl, LibvirtReferences

log = structlog.get_logger("vnetd.cleanup")


def rules_of(s: CleanupSettings) -> Rules:
    return Rules(taps=s.taps, bridges=s.bridges, networks=s.networks, ovs_bridges=s.ovs_bridges,
                 half_created=s.half_created, tap_grace=s.tap_grace_seconds,
                 bridge_grace=s.bridge_grace_seconds,
                 half_created_grace=s.half_created_grace_seconds, lease_seconds=s.lease_seconds)


def sweeper_for(net: NetBackend, policy: Policy, events: EventSink, settings: CleanupSettings,
                ctx: Context | None, *, locks: KeyedLocks, leases: Leases,
                libvirt_enabled: bool, restart_clocks: bool) -> Sweeper:
    references: ReferenceSource | None = None
    networks = None
    if libvirt_enabled and ctx is not None:
        references = LibvirtReferences(lambda: ctx.virt)
        networks = LibvirtNetworkTtl(lambda: ctx.virt)
    return Sweeper(net, policy, events, rules_of(settings), locks=locks, leases=leases,
                   references=references, networks=networks,
                   ovs=(lambda: ctx.ovs) if ctx is not None else None,
                   restart_clocks=restart_clocks)


class _ContextSink:
    """Emits to whatever ctx.events is at the time (the event bus is set up elsewhere)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def emit(self, type: str, subject: str | None, data: dict[str, Any]) -> None:
        self.ctx.events.emit(type, subject, data)


class CleanupComponent:
    name = "cleanup"

    def __init__(self, settings: CleanupSettings, ctx: Context, dispatcher: Dispatcher, *,
                 libvirt_enabled: bool) -> None:
        self.interval = settings.interval_seconds
        self.sweeper = sweeper_for(ctx.net, ctx.policy, _ContextSink(ctx), settings, ctx,
                                   locks=dispatcher.locks, leases=dispatcher.leases,
                                   libvirt_enabled=libvirt_enabled, restart_clocks=True)
        self.tasks = TaskTree(self.name)

    async def start(self) -> None:
        if self.interval > 0:
            self.tasks.spawn("sweep", self._periodic, restart=True)

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweeper.sweep(dry_run=False)
            except VnetdError as exc:  # the kernel or libvirt said no: try next time
                log.warning("cleanup_pass_failed", error=exc.message, code=exc.code.value)
            except Exception:  # a bug: log it, keep the daemon and the next pass
                log.exception("cleanup_pass_crashed")

    async def stop(self) -> None:
        await self.tasks.stop()


# ---------------------------------------------------------------------- one shot
PROBE_TIMEOUT = 3.0


async def _ask_daemon(settings: Settings, dry_run: bool,
                      timeout: float) -> dict[str, Any] | None:
    """The running daemon's cleanup.run reply; None when no daemon answers."""
    client = VnetClient(settings.amqp.broker_urls())
    try:
        await asyncio.wait_for(client.connect(), PROBE_TIMEOUT)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        log.info("cleanup_no_broker", error=str(exc) or type(exc).__name__)
        with contextlib.suppress(Exception):
            await client.close()
        return None
    try:
        try:
            # host.health first: a cleanup.run left in the queue of a stopped daemon
            # would run later, when nobody asked for it any more.
            await client.call(settings.host_id, "host.health", timeout=PROBE_TIMEOUT)
        except CallTimeout:
            log.info("cleanup_no_daemon", host_id=settings.host_id)
            return None
        reply = await client.call(settings.host_id, "cleanup.run", {"dry_run": dry_run},
                                  timeout=timeout)
        if not reply.ok:
            err = reply.error or {}
            raise CleanupFailed(f"{err.get('code')}: {err.get('message')}")
        return reply.result
    finally:
        await client.close()


class CleanupFailed(Exception):
    """The daemon answered cleanup.run with an error."""


async def _run_locally(settings: Settings, dry_run: bool) -> dict[str, Any]:
    net = NetlinkBackend(settings.netlink.netns or None)
    backend: LibvirtBackend | None = None
    try:
        p = settings.policy
        policy = Policy(attachable=p.attachable, protected=p.protected)
        if p.protect_default_route:
            policy = policy.with_protected(await net.default_route_interfaces())
        ctx = Context(host_id=settings.host_id, net=net, policy=policy, version=__version__)
        if settings.libvirt.enabled:
            backend = LibvirtBackend(settings.libvirt.uri)
            try:
                await backend.open(lambda _name, _event: None, lambda _reason: None)
                ctx.virt = backend
            except VirtError as exc:  # references unknown: the sweep keeps every device
                log.warning("cleanup_libvirt_unavailable", error=exc.message)
        # No daemon: no jobs run, so no leases; clocks come from the devices' markers.
        sweeper = sweeper_for(net, policy, ctx.events, settings.cleanup, ctx,
                              locks=KeyedLocks(), leases=Leases(),
                              libvirt_enabled=settings.libvirt.enabled, restart_clocks=False)
        return await sweeper.sweep(dry_run)
    finally:
        if backend is not None:
            await backend.close()
            backend.shutdown()
        await net.close()


async def cleanup_once(settings: Settings, dry_run: bool, *, local: bool = False,
                       timeout: float = 900.0) -> tuple[str, dict[str, Any]]:
    """(where it ran: "daemon" or "local", the sweep's result) for `vnetd cleanup`."""
    if not local:
        result = await _ask_daemon(settings, dry_run, timeout)
        if result is not None:
            return "daemon", result
    return "local", await _run_locally(settings, dry_run)


def describe(where: str, result: dict[str, Any]) -> str:
    """The human output of `vnetd cleanup`: one line per candidate, then a summary."""
    lines = []
    for c in result.get("candidates", []):
        action = c["action"].replace("_", " ")
        why = f": {c['reason']}" if c.get("reason") else ""
        lines.append(f"{c['kind']:<7} {c['name']:<16} {c['rule']:<13} {action}{why}")
    lines.append(
        f"{'dry run, ' if result.get('dry_run') else ''}ran in the {where}: "
        f"{result.get('checked', 0)} checked, {result.get('in_use', 0)} in use, "
        f"{result.get('removed', 0)} removed, {result.get('would_remove', 0)} would be removed, "
        f"{result.get('kept', 0)} kept ({result.get('duration_ms', 0)} ms)")
    return "\n".join(lines)
