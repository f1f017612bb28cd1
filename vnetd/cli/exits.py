"""vnetctl's exit statuses: sysexits.h values, and which reply error gives which.

Scripts branch on these, so they are part of the CLI's contract (README, `--help`).
"""

from __future__ import annotations

from collections.abc import Iterable

EX_OK = 0
EX_FAILED = 1       # a job failed for another reason (not_found, conflict), or `apply` had failures
EX_USAGE = 64       # bad command line: unknown command, op or argument, not key=value
EX_DATAERR = 65     # the daemon refused the job's arguments: invalid_argument
EX_UNAVAILABLE = 69  # no broker, no host answered, or the reply is unavailable/unsupported
EX_SOFTWARE = 70    # the daemon answered internal
EX_TEMPFAIL = 75    # no reply in time: the job may still run; resend with its --message-id
EX_NOPERM = 77      # forbidden: the device is not vnetd's, or protected
EX_CONFIG = 78      # the config file given (--config, VNETD_CONFIG) is missing or unreadable

BY_ERROR_CODE = {
    "invalid_argument": EX_DATAERR,
    "forbidden": EX_NOPERM,
    "unavailable": EX_UNAVAILABLE,
    "unsupported": EX_UNAVAILABLE,
    "internal": EX_SOFTWARE,
}

HELP = f"""exit status:
  {EX_OK}   every reply ok
  {EX_FAILED}   a job failed (not_found, conflict, ...), or some jobs of `apply` failed
  {EX_USAGE}  usage: unknown command, op or argument (with "did you mean")
  {EX_DATAERR}  invalid_argument: the daemon refused the arguments, nothing changed
  {EX_UNAVAILABLE}  no broker, no host answered, or unavailable / unsupported
  {EX_SOFTWARE}  internal error in the daemon
  {EX_TEMPFAIL}  no reply in time: the job may still run (resend with the same --message-id)
  {EX_NOPERM}  forbidden: not vnetd's device, or a protected one
  {EX_CONFIG}  the config file named by --config or VNETD_CONFIG cannot be read"""


def for_error(code: str | None) -> int:
    return BY_ERROR_CODE.get(code or "", EX_FAILED)


def worst(codes: Iterable[int]) -> int:
    """One status for many replies (a broadcast): the first failure's, else 0."""
    for code in codes:
        if code != EX_OK:
            return code
    return EX_OK
