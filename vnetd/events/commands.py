"""command.completed / command.failed: one event per job that changed (or tried to change) state.

A JobObserver (amqp.consumer calls `job_finished` after the job is acked).
Read-only ops (health, snapshot, lists) and duplicate deliveries answered from
the dedupe cache publish nothing: they change nothing, and health polling
would drown the stream.
"""

from __future__ import annotations

from typing import Any, Protocol

from vnetd.contract.events import EventSink

READ_ONLY_OPS = frozenset({"host.health", "host.snapshot", "bridge.list", "link.list",
                           "network.list", "network.dumpxml"})
BATCH_SUMMARY = ("completed", "failed", "skipped")


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
        if record.duplicate or record.op in READ_ONLY_OPS:
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
            if record.op == "batch":
                result = {k: result[k] for k in BATCH_SUMMARY if k in result}
            data["result"] = result
            self.sink.emit("command.completed", record.subject, data)
        else:
            data["error"] = record.error or {"code": record.error_code}
            self.sink.emit("command.failed", record.subject, data)
