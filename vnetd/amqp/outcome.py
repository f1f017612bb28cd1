"""The one place that turns a job's outcome into a reply and an AMQP action.

- success, or a permanent error (bad input, conflict, forbidden, ...): reply, ack.
- a temporary error (`unavailable`, e.g. libvirtd restarting):
  - with `reply_to`: answered at once and acked. The caller is there, learns
    it now instead of at its timeout, and decides when to retry; it gets
    exactly one reply, as for every other job.
  - without `reply_to` nobody would learn of it, so the job is not dropped:
    it goes to the host's retry queue and comes back after a delay
    (`Action.RETRY`), at most `attempts` times in all; after the last one it
    is dead-lettered to `vnetd.dead` with the reason (`Action.DEAD_LETTER`).
- an unexpected failure (`internal`), or a body that is not a JSON object:
  reply when asked, then dead-letter, so the message is kept for inspection
  instead of looping.
- a result that cannot be serialised is a bug too: `internal`, as above.
- a batch without `reply_to` in which a command met `unavailable` is
  retried as a whole, like a single job (its other commands converge again).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from vnetd.contract.errors import ErrorCode, Internal, Unavailable, VnetdError


class Action(Enum):
    ACK = "ack"
    DEAD_LETTER = "dead_letter"
    RETRY = "retry"
    """Published to the host's retry queue (it comes back after a delay), then acked."""
    GIVE_UP = "give_up"
    """Out of attempts: published to vnetd.dead with the reason in its headers, then acked."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the outcome of a failure depends on besides the error itself."""

    reply_to: bool
    """Whether the job asked for a reply."""
    attempt: int = 1
    """This delivery's attempt (1 for the first; the retry header counts the others)."""
    attempts: int = 1
    """Attempts a temporary failure gets in all before it is dead-lettered."""


ANSWERED = Delivery(reply_to=True)
"""A delivery whose temporary failures are answered, never retried (the default)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: bytes
    action: Action
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    """Why the job is dead-lettered or retried, for the message's headers and the log."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_code(self) -> str | None:
        return None if self.error is None else str(self.error["code"])


def success(result: dict[str, Any], *, op: str | None = None,
            delivery: Delivery = ANSWERED) -> Outcome:
    if op == "batch" and not delivery.reply_to:
        temporary = _unavailable_in_batch(result)
        if temporary is not None:
            return failure(temporary, delivery=delivery)
    try:
        body = orjson.dumps({"ok": True, "result": result})
    except (orjson.JSONEncodeError, TypeError) as exc:
        # A handler returned something JSON cannot hold: a bug, answered as one.
        return failure(Internal(f"the job's result cannot be serialised: {exc}",
                                result_type=type(result).__name__))
    return Outcome(body, Action.ACK, result=result)


def _unavailable_in_batch(result: dict[str, Any]) -> Unavailable | None:
    """Unavailable, when a command of this batch result met it (None otherwise)."""
    errors = [r.get("error") or {} for r in result.get("results") or ()
              if isinstance(r, dict) and not r.get("ok", True)]
    temporary = [e for e in errors if e.get("code") == ErrorCode.UNAVAILABLE.value]
    if not temporary:
        return None
    return Unavailable(f"{len(temporary)} command(s) of the batch met unavailable, the first: "
                       f"{temporary[0].get('message')}", commands=len(temporary))


def failure(error: VnetdError, *, malformed: bool = False,
            delivery: Delivery = ANSWERED) -> Outcome:
    body = error.to_dict()
    try:
        reply = orjson.dumps({"ok": False, "error": body}, default=str)
    except (orjson.JSONEncodeError, TypeError):
        # Details that even str() cannot save (e.g. non-string keys): keep the message.
        body = {"code": error.code.value, "message": error.message, "details": {}}
        reply = orjson.dumps({"ok": False, "error": body})
    reason = f"{error.code.value}: {error.message}"
    if malformed or error.code is ErrorCode.INTERNAL:
        return Outcome(reply, Action.DEAD_LETTER, error=body, reason=reason)
    if error.code is ErrorCode.UNAVAILABLE and not delivery.reply_to:
        if delivery.attempt < delivery.attempts:
            return Outcome(reply, Action.RETRY, error=body, reason=reason)
        return Outcome(reply, Action.GIVE_UP, error=body,
                       reason=f"{reason} (after {delivery.attempt} attempts)")
    return Outcome(reply, Action.ACK, error=body)
