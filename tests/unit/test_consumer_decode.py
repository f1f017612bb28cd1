"""The consumer's decode: one parse per body, and the plain-envelope shortcut decides
exactly as parse_request (pydantic's Envelope, then the op's model) does."""

from __future__ import annotations

from typing import Any, cast

import orjson
from aio_pika.abc import AbstractIncomingMessage
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.amqp_fakes import FakeChannel, FakeMessage
from tests.unit.test_consumer import Handler, consumer
from vnetd.amqp.outcome import Outcome
from vnetd.contract.commands import OPS, parse_request
from vnetd.contract.errors import InvalidArgument

ops = st.sampled_from(["tap.ensure", "bridge.ensure", "tap.delete", "host.health", "", "x" * 65,
                       "no.such"])
json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=6)
args = st.fixed_dictionaries({}, optional={"name": st.sampled_from(["tap0", "br0", "", "x" * 20]),
                                           "bridge": st.sampled_from(["br0", 5]),
                                           "mtu": st.integers(0, 70000)}) | json_values
bodies = st.fixed_dictionaries({}, optional={"op": ops | json_values, "args": args,
                                             "extra": json_values})


def reference(body: dict[str, Any]) -> Any:
    try:
        return parse_request(body)
    except InvalidArgument as exc:
        return exc.to_dict()


@given(body=bodies)
def test_the_shortcut_decides_as_parse_request(body: dict[str, Any]) -> None:
    c = consumer(FakeChannel(), Handler())
    msg = cast(AbstractIncomingMessage, FakeMessage(orjson.dumps(body)))
    label, decoded = c._decode(msg)
    want = reference(body)
    if isinstance(decoded, Outcome):
        assert decoded.error == want
        op = body.get("op")
        assert label == (op if isinstance(op, str) and op in OPS else "invalid")
    else:
        assert decoded == want and label == decoded.op


def test_a_rejected_body_is_labelled_by_its_known_op_and_parsed_once() -> None:
    c = consumer(FakeChannel(), Handler())
    msg = FakeMessage(orjson.dumps({"op": "tap.ensure", "args": {"name": ""}}))
    label, decoded = c._decode(cast(AbstractIncomingMessage, msg))
    assert label == "tap.ensure" and isinstance(decoded, Outcome)
    label, _ = c._decode(cast(AbstractIncomingMessage, FakeMessage(b"[1]")))
    assert label == "invalid"
