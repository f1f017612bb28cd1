"""The error families of the contract.

Every failure a handler can report is one of these. Permanent errors (bad input,
conflict, forbidden, unsupported, not found) are answered and acked, never
retried; temporary ones (`unavailable`) mean "try again later"; `internal` is a
bug in vnetd.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    FORBIDDEN = "forbidden"
    UNSUPPORTED = "unsupported"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class VnetdError(Exception):
    """An error with a contract code, a human message and structured details."""

    code: ErrorCode = ErrorCode.INTERNAL
    permanent: bool = True

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message, "details": self.details}


class InvalidArgument(VnetdError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFound(VnetdError):
    code = ErrorCode.NOT_FOUND


class Conflict(VnetdError):
    code = ErrorCode.CONFLICT


class Forbidden(VnetdError):
    code = ErrorCode.FORBIDDEN


class Unsupported(VnetdError):
    code = ErrorCode.UNSUPPORTED


class Unavailable(VnetdError):
    code = ErrorCode.UNAVAILABLE
    permanent = False


class Internal(VnetdError):
    code = ErrorCode.INTERNAL
