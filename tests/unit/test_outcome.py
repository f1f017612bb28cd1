"""vnetd.amqp.outcome: the one place that decides reply and ack/dead-letter."""

from __future__ import annotations

import orjson
import pytest

from vnetd.amqp.outcome import Action, Delivery, failure, success
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
    Unavailable("libvirt down"),  # temporary, with reply_to: answered so the caller retries
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


def test_a_result_json_cannot_hold_is_internal_and_dead_lettered() -> None:
    outcome = success({"name": "br0", "handle": object()})
    assert outcome.action is Action.DEAD_LETTER
    assert outcome.error_code == "internal"
    assert "cannot be serialised" in orjson.loads(outcome.reply)["error"]["message"]


def test_details_that_even_str_cannot_save_keep_the_message() -> None:
    outcome = failure(Conflict("odd", where={1: "non-string key"}))
    assert orjson.loads(outcome.reply)["error"] == {"code": "conflict", "message": "odd",
                                                   "details": {}}


@pytest.mark.parametrize(("delivery", "action"), [
    (Delivery(reply_to=True, attempt=1, attempts=5), Action.ACK),  # answered: caller retries
    (Delivery(reply_to=False, attempt=1, attempts=5), Action.RETRY),
    (Delivery(reply_to=False, attempt=4, attempts=5), Action.RETRY),
    (Delivery(reply_to=False, attempt=5, attempts=5), Action.GIVE_UP),
    (Delivery(reply_to=False, attempt=9, attempts=5), Action.GIVE_UP),
    (Delivery(reply_to=False, attempt=1, attempts=1), Action.GIVE_UP),
])
def test_unavailable_is_retried_only_when_nobody_would_be_told(delivery: Delivery,
                                                               action: Action) -> None:
    outcome = failure(Unavailable("libvirtd is unreachable"), delivery=delivery)
    assert outcome.action is action
    if action is not Action.ACK:
        assert outcome.reason is not None and "libvirtd is unreachable" in outcome.reason


@pytest.mark.parametrize("error", [Conflict("taken"), Internal("bug"), NotFound("no")])
def test_only_temporary_failures_are_retried(error: VnetdError) -> None:
    outcome = failure(error, delivery=Delivery(reply_to=False, attempt=1, attempts=5))
    assert outcome.action in (Action.ACK, Action.DEAD_LETTER)


def _batch(*codes: str | None) -> dict[str, object]:
    results = [{"ok": True, "result": {}} if c is None else
               {"ok": False, "error": {"code": c, "message": f"{c} here", "details": {}}}
               for c in codes]
    return {"results": results, "failed": sum(c is not None for c in codes), "skipped": 0,
            "completed": sum(c is None for c in codes)}


def test_a_batch_without_reply_to_that_met_unavailable_is_retried_whole() -> None:
    quiet = Delivery(reply_to=False, attempt=1, attempts=3)
    outcome = success(_batch(None, "unavailable", "conflict"), op="batch", delivery=quiet)
    assert outcome.action is Action.RETRY
    assert outcome.reason is not None and "1 command(s) of the batch met unavailable" in \
        outcome.reason and "unavailable here" in outcome.reason
    last = Delivery(reply_to=False, attempt=3, attempts=3)
    assert success(_batch("unavailable"), op="batch", delivery=last).action is Action.GIVE_UP
    # With reply_to the caller reads the results itself; without unavailable, nothing to retry.
    assert success(_batch("unavailable"), op="batch").action is Action.ACK
    assert success(_batch(None, "conflict"), op="batch", delivery=quiet).action is Action.ACK
