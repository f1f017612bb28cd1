"""The one place that turns a job's outcome into a reply and an AMQP action.

- success, or a permanent error (bad input, conflict, forbidden, ...): reply, ack.
- a temporary error (`unavailable`): reply so the caller can retry, ack.
- an unexpected failure (`internal`), or a body that is not a JSON object:
  reply when asked, then dead-letter, so the message is kept for inspection
  instead of looping.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from vnetd.contract.errors import ErrorCode, VnetdError


class Action(Enum):
    ACK = "ack"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: bytes
    action: Action
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_code(self) -> str | None:
        return None if self.error is None else str(self.error["code"])


def success(result: dict[str, Any]) -> Outcome:
    return Outcome(orjson.dumps({"ok": True, "result": result}), Action.ACK, result=result)


def failure(error: VnetdError, *, malformed: bool = False) -> Outcome:
    dead = malformed or error.code is ErrorCode.INTERNAL
    body = error.to_dict()
    return Outcome(
        orjson.dumps({"ok": False, "error": body}, default=str),
        Action.DEAD_LETTER if dead else Action.ACK,
        error=body,
    )
