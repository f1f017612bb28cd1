"""Fixtures of the unit tier: a FakeNet, a policy, and a dispatcher over them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.fakes import Caller, FakeNet
from vnetd.contract.commands import parse_request
from vnetd.handlers.context import Context
from vnetd.handlers.dispatch import Dispatcher
from vnetd.handlers.policy import Policy
from vnetd.handlers.registry import build_registry


@pytest.fixture
def net() -> FakeNet:
    return FakeNet()


@pytest.fixture
def policy() -> Policy:
    return Policy(attachable=("eth*", "ens*"), protected=("lo", "br-ext*"))


@pytest.fixture
def ctx(net: FakeNet, policy: Policy) -> Context:
    return Context(host_id="hv1", net=net, policy=policy, version="0.0-test",
                   components=lambda: {"amqp": "connected", "libvirt": "disabled"})


@pytest.fixture
def dispatcher(ctx: Context) -> Dispatcher:
    return Dispatcher(build_registry(), ctx)


@pytest.fixture
def call(dispatcher: Dispatcher) -> Caller:
    """Run one request the way the consumer does: validate the body, then dispatch."""

    async def run(op: str, **args: Any) -> dict[str, Any]:
        return await dispatcher.execute(parse_request({"op": op, "args": args}))

    return run
