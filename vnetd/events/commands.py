"""command.completed / command.failed: one event per job that changed (or tried to change) state.

A JobObserver (amqp.consumer calls `job_finished` after the job is acked).
Read-only ops (their OpSpec says so: health, snapshot, lists) and duplicate
deliveries answered from the dedupe cache publish nothing: they change nothing,
and health polling would drown the stream.
"""

from __future__ import annotations

from typing import Any, Protocol

from vnetd.contract.commands import spec_of
from vnetd.contract.events import EventSink


class FinishedJob(Protocol):
    """The fields of amqp.consumer.JobRecord this observer reads."""

    @property
    def op(self) -> str: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def ok(self) -> bool: ...
    @property
    def error_code(self) -> str | None: ...
    @property
    def duration(self) -> float: ...
    @property
    def subject(self) -> str | None: ...
    @property
    def result(self) -> dict[str, Any] | None: ...
    @property
    def error(self) -> dict[str, Any] | None: ...
    @property
    def duplicate(self) -> bool: ...


class CommandEvents:
    def __init__(self, sink: EventSink) -> None:
        self.sink = sink

    def job_finished(self, record: FinishedJob) -> None:
        spec = spec_of(record.op)  # None for an invalid request: its failure is published
        if record.duplicate or (spec is not None and spec.read_only):
            return
        data: dict[str, Any] = {
            "op": record.op,
            "ok": record.ok,
            "message_id": record.message_id,
            "correlation_id": record.correlation_id,
            "duration_ms": round(record.duration * 1000, 3),
        }
        if record.ok:
            result = record.result or {}
            if spec is not None and spec.event_result is not None:
                result = {k: result[k] for k in spec.event_result if k in result}
            data["result"] = result
            self.sink.emit("command.completed", record.subject, data)
        else:
            data["error"] = record.error or {"code": record.error_code}
            self.sink.emit("command.failed", record.subject, data)
