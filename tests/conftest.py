"""Fixtures for vnetd's tests.

Integration tests (marker ``integration``; everything under tests/integration/ gets it
automatically) run only inside the lab made by scripts/test.sh. Outside the lab they
FAIL (they are never skipped silently) unless deselected with ``-m "not integration"``.
Unit tests (tests/unit/) need none of this.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.support import netns as netns_mod
from tests.support.broker import LabBroker
from tests.support.daemon import DaemonProcess
from tests.support.env import NOT_IN_LAB, Lab, in_lab, in_root_netns, netns_inode
from tests.support.rpc import RawRpc
from tests.support.toml import deep_merge

INTEGRATION_DIR = Path(__file__).parent / "integration"
_DAEMONS_KEY = pytest.StashKey[list[DaemonProcess]]()


# Property tests check what is decided, not how fast: on a loaded 2-core machine one
# example can take longer than Hypothesis's default 200 ms deadline, or generating the
# first inputs longer than its health check allows, which made correct tests fail.
settings.register_profile("vnetd", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("vnetd")


# ---------------------------------------------------------------- collection / safety
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


def pytest_collection_finish(session: pytest.Session) -> None:
    selected = [i for i in session.items if i.get_closest_marker("integration")]
    if not selected or not in_lab():
        return  # outside the lab the integration tests fail one by one in setup
    lab = Lab.from_env()
    if in_root_netns():
        pytest.exit(
            "SAFETY: integration tests selected but this process is in the machine's root "
            "network namespace; run them through scripts/test.sh",
            returncode=3,
        )
    lab_path = f"/run/netns/{lab.netns}"
    if not os.path.exists(lab_path) or netns_inode(lab_path) != netns_inode("/proc/self/ns/net"):
        pytest.exit(f"SAFETY: this process is not in the lab namespace {lab.netns}", returncode=3)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") and not in_lab():
        pytest.fail(NOT_IN_LAB, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for d in item.stash.get(_DAEMONS_KEY, []):
            report.sections.append(
                (f"vnetd {d.host_id} log tail ({d.log_path})", d.log_tail(80) or "(empty)")
            )
    return report


# ---------------------------------------------------------------- lab
@pytest.fixture(scope="session")
def lab() -> Lab:
    """The lab of this run (VNETD_LAB_NETNS, VNETD_LAB_SUFFIX, VNETD_LAB_DIR, AMQP URL)."""
    if not in_lab():
        pytest.fail(NOT_IN_LAB, pytrace=False)
    return Lab.from_env()


@pytest.fixture(scope="session")
def amqp_url(lab: Lab) -> str:
    """VNETD_TEST_AMQP_URL: the lab's private broker (amqp://guest:guest@127.0.0.1:5672/)."""
    return lab.amqp_url


@pytest.fixture
def lab_broker(lab: Lab) -> Iterator[LabBroker]:
    """Stop/start/restart the lab broker; it is brought back up after the test."""
    broker = LabBroker.from_env()
    yield broker
    if not broker.is_up():
        broker.start()


# ---------------------------------------------------------------- namespaces
@pytest.fixture
def netns_factory(lab: Lab) -> Iterator[netns_mod.NetnsFactory]:
    """``netns_factory() -> name``: more namespaces ``vt-<suffix>-<n>``, all deleted after."""
    factory = netns_mod.NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def netns(netns_factory: netns_mod.NetnsFactory) -> str:
    """A fresh namespace with lo up, deleted after the test (also on failure)."""
    return netns_factory()


# ---------------------------------------------------------------- AMQP client
@pytest.fixture
async def rpc(amqp_url: str) -> AsyncIterator[RawRpc]:
    """A connected raw-contract RPC client (no vnetd imports)."""
    async with RawRpc(amqp_url) as client:
        yield client


# ---------------------------------------------------------------- the daemon
StartDaemon = Callable[..., Awaitable[DaemonProcess]]


@pytest.fixture
async def start_daemon(
    request: pytest.FixtureRequest, lab: Lab, amqp_url: str, netns_factory: netns_mod.NetnsFactory
) -> AsyncIterator[StartDaemon]:
    """``await start_daemon(netns=None, *, host_id=None, extra=None, wait_ready=True,
    ready_timeout=30.0, env=None, **sections)`` -> a started DaemonProcess.

    ``netns`` defaults to a new namespace. ``sections`` are deep-merged into the config
    (e.g. ``amqp={"prefetch": 8}``, ``libvirt={"enabled": True, "uri": ...}``), then
    ``extra``. Every daemon is stopped (SIGTERM, then SIGKILL) at teardown; on failure
    the report shows each daemon's log tail. Files: $VNETD_LAB_DIR/daemons/<host_id>/.
    """
    daemons: list[DaemonProcess] = []
    request.node.stash[_DAEMONS_KEY] = daemons

    async def start(
        netns: str | None = None,
        *,
        host_id: str | None = None,
        extra: dict[str, Any] | None = None,
        wait_ready: bool = True,
        ready_timeout: float = 30.0,
        env: dict[str, str] | None = None,
        **sections: Any,
    ) -> DaemonProcess:
        host_id = host_id or DaemonProcess.new_host_id(lab.suffix)
        d = DaemonProcess(
            host_id=host_id,
            amqp_url=amqp_url,
            netns=netns or netns_factory(),
            workdir=lab.dir / "daemons" / host_id,
            extra=deep_merge(sections, extra),
            env=env,
            ready_timeout=ready_timeout,
        )
        daemons.append(d)
        await d.start(wait_ready=wait_ready)
        return d

    try:
        yield start
    finally:
        for d in daemons:
            await d.stop()


@pytest.fixture
async def daemon(start_daemon: StartDaemon, netns: str) -> DaemonProcess:
    """One started daemon doing its netlink work in the ``netns`` fixture's namespace."""
    return await start_daemon(netns=netns)
