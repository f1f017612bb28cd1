"""vnetd.amqp.outcome: the one place that decides reply and ack/dead-letter."""

from __future__ import annotations

import orjson
import pytest

from vnetd.amqp.outcome import Action, failure, success
from vnetd.contract.errors import (
    Conflict,
    Forbidden,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unsupported,
    VnetdError,
)


def test_success_is_acked_with_the_result() -> None:
    outcome = success({"name": "br0", "created": True})
    assert outcome.action is Action.ACK
    assert outcome.ok is True
    assert outcome.error_code is None
    assert orjson.loads(outcome.reply) == {"ok": True, "result": {"name": "br0",
                                                                 "created": True}}


@pytest.mark.parametrize("error", [
    InvalidArgument("bad mtu", field="mtu"),
    NotFound("no br0", name="br0"),
    Conflict("taken"),
    Forbidden("not ours"),
    Unsupported("no"),
    Unavailable("libvirt down"),  # temporary: answered so the caller retries, not requeued
])
def test_answered_errors_are_acked(error: VnetdError) -> None:
    outcome = failure(error)
    assert outcome.action is Action.ACK
    assert outcome.ok is False
    assert outcome.error_code == error.code.value
    assert orjson.loads(outcome.reply) == {
        "ok": False,
        "error": {"code": error.code.value, "message": error.message, "details": error.details},
    }


def test_internal_is_dead_lettered() -> None:
    outcome = failure(Internal("bridge.ensure failed unexpectedly", op="bridge.ensure"))
    assert outcome.action is Action.DEAD_LETTER
    assert orjson.loads(outcome.reply)["error"] == {
        "code": "internal", "message": "bridge.ensure failed unexpectedly",
        "details": {"op": "bridge.ensure"}}


def test_a_malformed_body_is_dead_lettered_even_as_invalid_argument() -> None:
    assert failure(InvalidArgument("not JSON"), malformed=True).action is Action.DEAD_LETTER
    assert failure(InvalidArgument("not JSON")).action is Action.ACK


def test_details_that_json_cannot_hold_are_stringified() -> None:
    outcome = failure(Conflict("odd", where=frozenset({"x"})))
    body = orjson.loads(outcome.reply)
    assert body["error"]["details"]["where"] == str(frozenset({"x"}))
