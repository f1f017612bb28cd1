"""Cleanup of vnetd's own orphans: idle TAPs, empty bridges, expired transient networks.

What is an orphan (each rule switchable in `[cleanup]`, each with its grace):
- `tap.idle`: an owned TAP no process holds open (the kernel's carrier is off:
  a TAP has carrier exactly while some file descriptor is attached to it, even
  when it is administratively down), idle longer than `tap_grace_seconds`, and
  that no libvirt domain references;
- `bridge.empty`: an owned bridge with no ports, for longer than
  `bridge_grace_seconds`, that no libvirt network or domain references;
- `network.ttl`: an owned transient libvirt network past the time-to-live it
  was given when it was created;
- `ovs_bridge.empty`: an OVS bridge vnetd created (`external_ids:vnetd-owner`)
  with no port besides its own internal one, for longer than
  `bridge_grace_seconds`, that no libvirt network or domain references (its
  idle clock lives in this process only: a restart restarts it).
- `vxlan.orphan`: an owned VXLAN device attached to no bridge (its bridge is
  gone, so it carries no guest's traffic), for longer than
  `bridge_grace_seconds` (switched with the bridge rule).
- `half_created`: a bridge or VXLAN still in interface group CREATING_GROUP
  (net/model.py: vnetd's creation a kill cut short, marked or not yet) for
  longer than `half_created_grace_seconds`, with no port and no master. The
  next ensure of its name would finish it; when that job never comes back
  (dead-lettered), this rule removes it. Its clock lives in this process only
  (nothing is written to a device whose creation is unfinished), so a one-shot
  local `vnetd cleanup` without a daemon removes one only with a zero grace.
Other devices vnetd does not own (no `vnetd:` alias) and protected ones are
never looked at.

What keeps a device although it matches: a lease (handlers/leases.py: a job
created or used it less than `lease_seconds` ago, or holds it with
`hold_seconds`), being seen in use at any check of the pass, a libvirt
reference, or libvirt references being unknown (libvirtd down).

Check and delete are as close as netlink allows: right before deleting, the
sweep takes the per-name lock jobs take (`link_lock(name)`), reads the device
again, checks that it is the same device (same index, still ours), still idle,
and still not leased, then deletes it by index.

Grace clocks: the first time a device is seen idle, the time is written into
its own alias (`vnetd:v1 idle=<seconds since boot>/<carrier changes>`), so a
one-shot `vnetd cleanup` run without a daemon still knows how long it has been
idle. The daemon in addition restarts every clock when it starts: jobs' leases
live in its memory only, so after a restart it keeps everything for at least a
grace period rather than trust a clock that a lost lease might have reset.
For a TAP the marker is valid only while the kernel's carrier-change count is
the one written in it (any attach or detach in between invalidates it).

Must not: touch anything unowned, change anything on a dry run, or hold a
device's lock for more than one re-check and one delete.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from vnetd import metrics
from vnetd.contract.base import link_lock
from vnetd.contract.cleanup import CleanupRun
from vnetd.contract.errors import NotFound, Unavailable, VnetdError
from vnetd.contract.events import EventSink
from vnetd.handlers.context import Context
from vnetd.handlers.leases import Clock, Leases
from vnetd.handlers.policy import Policy
from vnetd.net.backend import NetBackend
from vnetd.net.model import OWNER_ALIAS, Link, LinkChange
from vnetd.ovs.backend import OWNER_KEY, OWNER_VALUE, OvsBackend, OvsBridge, OvsError

if TYPE_CHECKING:
    from vnetd.handlers.dispatch import KeyedLocks

log = structlog.get_logger("vnetd.cleanup")

TAP_RULE = "tap.idle"
BRIDGE_RULE = "bridge.empty"
NETWORK_RULE = "network.ttl"
OVS_BRIDGE_RULE = "ovs_bridge.empty"
VXLAN_RULE = "vxlan.orphan"
HALF_CREATED_RULE = "half_created"
HALF_CREATED_KINDS = ("bridge", "vxlan")
"""The kinds vnetd creates over rtnetlink, born in CREATING_GROUP."""
PARALLEL = 256
"""Devices re-checked and removed (or clocks written) at once."""
_MARKER = re.compile(r"^(vnetd:\S*) idle=(\d+(?:\.\d+)?)/(\d+)$")


@dataclass(frozen=True, slots=True)
class Rules:
    taps: bool = True
    bridges: bool = True
    networks: bool = True
    ovs_bridges: bool = True
    half_created: bool = True
    tap_grace: float = 600.0
    bridge_grace: float = 600.0
    half_created_grace: float = 300.0
    lease_seconds: float = 60.0


class ReferenceSource(Protocol):
    async def referenced_interfaces(self) -> dict[str, str]:
        """Interface name -> who references it ("network default", "domain vm1").

        Bridges of libvirt networks and the target devices and source bridges
        of every defined domain (running or not). Raises Unavailable when it
        cannot tell (libvirtd down): the sweep then removes no device.
        """


class NoReferences:
    """libvirt is not managed on this host: nothing references vnetd's devices."""

    async def referenced_interfaces(self) -> dict[str, str]:
        return {}


class NetworkSource(Protocol):
    async def expiring_networks(self) -> list[tuple[str, float]]:
        """(name, seconds until its TTL runs out; negative: expired) of every owned
        transient network that was given a TTL."""

    async def remove_expired(self, name: str) -> bool:
        """Destroy the network if it is still ours and still expired; False if not."""


def parse_marker(alias: str | None) -> tuple[float, int] | None:
    """(idle since, carrier changes then) from a device's alias, if it carries a clock."""
    m = _MARKER.match(alias or "")
    return (float(m.group(2)), int(m.group(3))) if m else None


def marker(since: float, carrier_changes: int) -> str:
    return f"{OWNER_ALIAS} idle={since:.1f}/{carrier_changes}"


@dataclass
class _Seen:
    """What this process saw of one idle device: when, and with which carrier count."""

    index: int
    carrier_changes: int
    since: float


@dataclass
class _Candidate:
    link: Link
    rule: str
    entry: dict[str, Any]


@dataclass
class Report:
    dry_run: bool
    candidates: list[dict[str, Any]] = field(default_factory=list)
    checked: int = 0
    in_use: int = 0

    def add(self, entry: dict[str, Any], action: str, reason: str | None = None) -> None:
        entry["action"] = action
        if reason is not None:
            entry["reason"] = reason
        self.candidates.append(entry)

    def result(self, seconds: float) -> dict[str, Any]:
        actions = Counter(c["action"] for c in self.candidates)
        return {
            "dry_run": self.dry_run,
            "checked": self.checked,
            "in_use": self.in_use,
            "removed": actions["removed"],
            "would_remove": actions["would_remove"],
            "kept": actions["kept"],
            "duration_ms": round(seconds * 1000, 3),
            "candidates": self.candidates,
        }


class Sweeper:
    """One sweep at a time over the kernel's links (and libvirt's networks)."""

    def __init__(self, net: NetBackend, policy: Policy, events: EventSink, rules: Rules, *,
                 locks: KeyedLocks, leases: Leases,
                 references: ReferenceSource | None = None,
                 networks: NetworkSource | None = None,
                 ovs: Callable[[], OvsBackend | None] | None = None,
                 clock: Clock | None = None, restart_clocks: bool = True) -> None:
        self.net = net
        self.policy = policy
        self.events = events
        self.rules = rules
        self.locks = locks
        self.leases = leases
        self.references: ReferenceSource = references or NoReferences()
        self.networks = networks
        self.ovs = ovs
        self._ovs_seen: dict[str, tuple[str, float]] = {}  # name -> (row uuid, idle since)
        self.clock: Clock = clock or leases.clock
        self.started = self.clock() if restart_clocks else float("-inf")
        self._seen: dict[str, _Seen] = {}
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ the pass
    async def sweep(self, dry_run: bool = False) -> dict[str, Any]:
        async with self._lock:  # a periodic sweep and cleanup.run never interleave
            began = time.perf_counter()
            report = Report(dry_run=dry_run)
            await self._links(report)
            if self.rules.networks and self.networks is not None:
                await self._networks(report)
            if self.rules.ovs_bridges and self.ovs is not None:
                await self._ovs_bridges(report)
            result = report.result(time.perf_counter() - began)
            log.info("cleanup_pass", dry_run=dry_run, checked=result["checked"],
                     in_use=result["in_use"], removed=result["removed"],
                     would_remove=result["would_remove"], kept=result["kept"],
                     duration_ms=result["duration_ms"])
            return result

    def _rule(self, link: Link) -> str | None:
        if self.policy.is_protected(link.name):
            return None
        if link.half_created and link.kind in HALF_CREATED_KINDS and self.rules.half_created:
            return HALF_CREATED_RULE  # ours by its group, even before it is marked
        if not link.owned:
            return None
        if link.kind == "tap" and self.rules.taps:
            return TAP_RULE
        if link.kind == "bridge" and self.rules.bridges:
            return BRIDGE_RULE
        if link.kind == "vxlan" and self.rules.bridges:
            return VXLAN_RULE
        return None

    def _grace(self, rule: str) -> float:
        if rule == HALF_CREATED_RULE:
            return self.rules.half_created_grace
        return self.rules.tap_grace if rule == TAP_RULE else self.rules.bridge_grace

    @staticmethod
    def _in_use(link: Link, rule: str, ports: Counter[int]) -> str | None:
        if rule == TAP_RULE:
            return "held open by a process (carrier on)" if link.carrier else None
        if rule == VXLAN_RULE or link.kind != "bridge":
            return "attached to a bridge" if link.master else None
        n = ports[link.index]
        return f"has {n} port(s)" if n else None

    async def _refs(self) -> tuple[dict[str, str] | None, str | None]:
        try:
            return await self.references.referenced_interfaces(), None
        except VnetdError as exc:
            return None, exc.message

    async def _links(self, report: Report) -> None:
        now = self.clock()
        self.leases.prune(max(self.rules.lease_seconds, self.rules.tap_grace,
                              self.rules.bridge_grace, self.rules.half_created_grace))
        # Under steady churn (plugs every millisecond) a dump of the whole table is
        # interrupted every time; the sweep takes the last one anyway: it only picks
        # candidates, each re-checked on fresh state under its lock before anything
        # is removed, so a link the dump missed or read stale waits for the next sweep.
        links = await self.net.list_links(exact=False)
        ports: Counter[int] = Counter(link.master for link in links if link.master)
        refs, refs_problem = await self._refs()
        seen: dict[str, _Seen] = {}
        due: list[_Candidate] = []
        clocks: list[tuple[Link, float]] = []  # markers to write (idle, within grace)
        clears: list[Link] = []  # markers to clear (bridge in use again)
        for link in links:
            rule = self._rule(link)
            if rule is None:
                continue
            report.checked += 1
            if self._in_use(link, rule, ports):
                report.in_use += 1
                if rule in (BRIDGE_RULE, VXLAN_RULE) and parse_marker(link.alias) is not None:
                    clears.append(link)
                continue
            since, stored = self._idle_since(link, rule, now)
            seen[link.name] = _Seen(link.index, link.carrier_changes, since)
            lease = self.leases.get(link.name)
            start = max(since, self.started, lease.last_used if lease else float("-inf"))
            idle = max(0.0, now - start)
            grace = self._grace(rule)
            entry: dict[str, Any] = {"kind": link.kind, "name": link.name, "rule": rule,
                                     "idle_seconds": round(idle, 3), "grace_seconds": grace}
            reason = self._kept_because(link.name, idle, grace, refs, refs_problem)
            if reason is None:
                due.append(_Candidate(link, rule, entry))
                continue
            report.add(entry, "kept", reason)
            if not stored and rule != HALF_CREATED_RULE:  # never write to an unfinished one
                clocks.append((link, since))
        self._seen = seen
        if report.dry_run:
            for cand in due:
                report.add(cand.entry, "would_remove")
            return
        if due:  # libvirt may have started using one since the first look
            refs, refs_problem = await self._refs()
        # Concurrently, each under its own lock: the kernel takes ~20 ms per device
        # deletion (an RCU grace period) but the backend batches concurrent ones.
        limit = asyncio.Semaphore(PARALLEL)

        async def bounded(work: Awaitable[None]) -> None:
            async with limit:
                await work

        await asyncio.gather(*(bounded(self._remove(c, refs, refs_problem, report))
                               for c in due))
        await asyncio.gather(
            *(bounded(self._write_clock(link, marker(since, link.carrier_changes)))
              for link, since in clocks),
            *(bounded(self._write_clock(link, OWNER_ALIAS)) for link in clears))

    def _idle_since(self, link: Link, rule: str, now: float) -> tuple[float, bool]:
        """When this device became idle, and whether its own marker already says so."""
        stored = parse_marker(link.alias) if rule != HALF_CREATED_RULE else None
        if stored is not None and (rule != TAP_RULE or stored[1] == link.carrier_changes):
            return stored[0], True
        mine = self._seen.get(link.name)
        if (mine is not None and mine.index == link.index
                and (rule != TAP_RULE or mine.carrier_changes == link.carrier_changes)):
            return mine.since, False
        return now, False

    async def _remove(self, cand: _Candidate, refs: dict[str, str] | None,
                      refs_problem: str | None, report: Report) -> None:
        link, entry = cand.link, cand.entry
        async with self.locks.hold((link_lock(link.name),)):
            reason = await self._recheck(cand, refs, refs_problem)
            if reason is None:
                try:
                    await self.net.delete_link(link.index)
                except NotFound:
                    reason = "gone before it could be removed"
        if reason is not None:
            report.add(entry, "kept", reason)
            return
        report.add(entry, "removed")
        self.leases.forget(link.name)
        self._seen.pop(link.name, None)
        metrics.CLEANUP_REMOVED.labels(kind=link.kind).inc()
        self.events.emit("cleanup.removed", link.name,
                         {"kind": link.kind, "rule": cand.rule,
                          "idle_seconds": entry["idle_seconds"]})
        log.info("cleanup_removed", kind=link.kind, interface=link.name, rule=cand.rule,
                 idle_seconds=entry["idle_seconds"])

    def _kept_because(self, name: str, idle: float, grace: float,
                      refs: dict[str, str] | None, refs_problem: str | None) -> str | None:
        """Why an orphan candidate is kept at the first check; None: it is due."""
        held = self.leases.held_for(name, self.rules.lease_seconds)
        if held > 0:
            return f"leased by a job for {held:.1f}s more"
        if idle < grace:
            return f"idle {idle:.1f}s of {grace:g}s grace"
        return _referenced(name, refs, refs_problem)

    async def _recheck(self, cand: _Candidate, refs: dict[str, str] | None,
                       refs_problem: str | None) -> str | None:
        """Why the device must be kept after all, read again under its lock; None: remove."""
        link = cand.link
        if (reason := _referenced(link.name, refs, refs_problem)) is not None:
            return reason
        now_ = await self.net.get_link(link.name)
        if now_ is None or now_.index != link.index:
            return "replaced or gone since the first check"
        if cand.rule == HALF_CREATED_RULE:
            if not now_.half_created:  # an ensure finished it (it is a normal device now)
                return "its creation was finished since the first check"
        elif not now_.owned:
            return "no longer carries vnetd's marker"
        if cand.rule == TAP_RULE:
            if now_.carrier or now_.carrier_changes != link.carrier_changes:
                return "in use at the re-check (a process opened it)"
        elif cand.rule == VXLAN_RULE or link.kind != "bridge":
            if now_.master is not None:
                return "attached to a bridge at the re-check"
        else:
            ports = [p.name for p in await self.net.list_links() if p.master == link.index]
            if ports:
                return f"has port(s) at the re-check: {', '.join(sorted(ports)[:5])}"
        # The lease is checked last, after every await: a job renews it under this lock.
        held = self.leases.held_for(link.name, self.rules.lease_seconds)
        if held > 0:
            return f"leased by a job for {held:.1f}s more"
        return None

    async def _write_clock(self, link: Link, alias: str) -> None:
        """Store (or clear) the idle clock in the device's own alias, if it is still it."""
        async with self.locks.hold((link_lock(link.name),)):
            try:
                now_ = await self.net.get_link(link.name)
                if now_ is None or now_.index != link.index or not now_.owned:
                    return
                await self.net.set_link(link.index, LinkChange(alias=alias))
            except VnetdError as exc:  # a lost clock only means keeping the device longer
                log.warning("cleanup_clock_not_stored", interface=link.name, error=exc.message)

    # ------------------------------------------------------------------ networks
    async def _networks(self, report: Report) -> None:
        if self.networks is None:  # the caller checks; nothing to sweep without libvirt
            return
        try:
            expiring = await self.networks.expiring_networks()
        except VnetdError as exc:
            log.warning("cleanup_networks_unknown", error=exc.message)
            report.add({"kind": "network", "name": "*", "rule": NETWORK_RULE}, "kept",
                       f"libvirt networks unknown: {exc.message}")
            return
        for name, expires_in in expiring:
            report.checked += 1
            entry: dict[str, Any] = {"kind": "network", "name": name, "rule": NETWORK_RULE,
                                     "expires_in_seconds": round(expires_in, 3)}
            if expires_in > 0:
                report.add(entry, "kept", f"TTL runs out in {expires_in:.1f}s")
                continue
            if report.dry_run:
                report.add(entry, "would_remove")
                continue
            async with self.locks.hold((f"network:{name}",)):
                try:
                    removed = await self.networks.remove_expired(name)
                except VnetdError as exc:
                    report.add(entry, "kept", f"could not remove: {exc.message}")
                    continue
            if not removed:
                report.add(entry, "kept", "changed since the first check")
                continue
            report.add(entry, "removed")
            metrics.CLEANUP_REMOVED.labels(kind="network").inc()
            self.events.emit("cleanup.removed", name,
                             {"kind": "network", "rule": NETWORK_RULE,
                              "expired_seconds_ago": round(-expires_in, 3)})
            log.info("cleanup_removed", kind="network", network=name, rule=NETWORK_RULE)

    # ------------------------------------------------------------------ OVS bridges
    async def _ovs_bridges(self, report: Report) -> None:
        backend = self.ovs() if self.ovs is not None else None
        if backend is None:
            return
        try:
            state = await backend.snapshot()
        except OvsError as exc:
            report.add({"kind": "ovs_bridge", "name": "*", "rule": OVS_BRIDGE_RULE}, "kept",
                       f"OVS bridges unknown: {exc.message}")
            return
        refs, refs_problem = await self._refs()
        now = self.clock()
        seen: dict[str, tuple[str, float]] = {}
        for br in state.bridges:
            if not br.owned or self.policy.is_protected(br.name):
                continue
            report.checked += 1
            if br.guest_ports():
                report.in_use += 1
                continue
            mine = self._ovs_seen.get(br.name)
            since = mine[1] if mine is not None and mine[0] == br.uuid else now
            seen[br.name] = (br.uuid, since)
            lease = self.leases.get(br.name)
            idle = max(0.0, now - max(since, self.started,
                                      lease.last_used if lease else float("-inf")))
            grace = self.rules.bridge_grace
            entry: dict[str, Any] = {"kind": "ovs_bridge", "name": br.name,
                                     "rule": OVS_BRIDGE_RULE, "idle_seconds": round(idle, 3),
                                     "grace_seconds": grace}
            reason = self._kept_because(br.name, idle, grace, refs, refs_problem)
            if reason is not None:
                report.add(entry, "kept", reason)
            elif report.dry_run:
                report.add(entry, "would_remove")
            else:
                await self._remove_ovs_bridge(backend, br, entry, report)
        self._ovs_seen = seen

    async def _remove_ovs_bridge(self, backend: OvsBackend, br: OvsBridge,
                                 entry: dict[str, Any], report: Report) -> None:
        """Re-check under the bridge's lock (the one ovs.* jobs take), then delete that row."""
        async with self.locks.hold((link_lock(br.name),)):
            reason: str | None = None
            try:
                now_ = (await backend.snapshot()).bridge(br.name)
                held = self.leases.held_for(br.name, self.rules.lease_seconds)
                if now_ is None or now_.uuid != br.uuid:
                    reason = "replaced or gone since the first check"
                elif not now_.owned:
                    reason = "no longer carries vnetd's marker"
                elif now_.guest_ports():
                    reason = "has port(s) at the re-check"
                elif held > 0:
                    reason = f"leased by a job for {held:.1f}s more"
                else:
                    await backend.delete_bridge(br.uuid, {OWNER_KEY: OWNER_VALUE})
            except OvsError as exc:
                reason = f"could not remove: {exc.message}"
        if reason is not None:
            report.add(entry, "kept", reason)
            return
        report.add(entry, "removed")
        self.leases.forget(br.name)
        self._ovs_seen.pop(br.name, None)
        metrics.CLEANUP_REMOVED.labels(kind="ovs_bridge").inc()
        self.events.emit("cleanup.removed", br.name,
                         {"kind": "ovs_bridge", "rule": OVS_BRIDGE_RULE,
                          "idle_seconds": entry["idle_seconds"]})
        log.info("cleanup_removed", kind="ovs_bridge", bridge=br.name, rule=OVS_BRIDGE_RULE)


async def run(cmd: CleanupRun, ctx: Context) -> dict[str, Any]:
    """cleanup.run: one sweep now (dry_run: only say what would be removed)."""
    if ctx.cleanup is None:
        raise Unavailable("cleanup is not set up in this daemon")
    return await ctx.cleanup.sweep(cmd.dry_run)


def _referenced(name: str, refs: dict[str, str] | None, refs_problem: str | None) -> str | None:
    """Why libvirt's references keep `name` (unknown references keep everything)."""
    if refs is None:
        return f"libvirt references unknown: {refs_problem}"
    if name in refs:
        return f"referenced by libvirt {refs[name]}"
    return None
