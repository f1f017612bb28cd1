"""Log output: journald fields (on a recording send) and JSON lines on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import structlog

from vnetd.config.settings import LogSettings
from vnetd.service.journal import MESSAGE_IDS, JournalRenderer, field_name, journal_fields
from vnetd.service.logging import connected_to_journal


def test_job_line_becomes_journal_fields() -> None:
    fields = journal_fields({
        "event": "job", "level": "info", "timestamp": "x", "op": "tap.ensure", "ok": True,
        "error": None, "duration_ms": 1.5, "correlation_id": "c-1", "interface": "tap0",
        "message_id": "m-1"})
    assert fields["MESSAGE"] == "job tap.ensure tap0 ok in 1.5 ms"
    assert fields["PRIORITY"] == "6"
    assert fields["SYSLOG_IDENTIFIER"] == "vnetd"
    assert fields["OP"] == "tap.ensure"
    assert fields["CORRELATION_ID"] == "c-1"
    assert fields["INTERFACE"] == "tap0"
    assert fields["DURATION_MS"] == "1.5"
    assert fields["VNETD_MESSAGE_ID"] == "m-1"  # the AMQP message_id cannot be MESSAGE_ID
    assert "MESSAGE_ID" not in fields and "TIMESTAMP" not in fields and "ERROR" not in fields


def test_key_events_carry_a_stable_message_id() -> None:
    for name in ("ready", "stopping", "resync", "drain_timeout"):
        fields = journal_fields({"event": name, "level": "warning"})
        assert fields["MESSAGE_ID"] == MESSAGE_IDS[name]
        uuid.UUID(hex=fields["MESSAGE_ID"])
        assert fields["PRIORITY"] == "4"
    assert len(set(MESSAGE_IDS.values())) == len(MESSAGE_IDS)
    failed = journal_fields({"event": "job", "level": "error", "op": "x", "ok": False,
                             "error": "internal", "duration_ms": 2})
    assert failed["MESSAGE"] == "job x failed: internal in 2 ms" and failed["PRIORITY"] == "3"


@pytest.mark.parametrize(("key", "name"), [
    ("op", "OP"), ("a-b.c", "A_B_C"), ("_x", "X"), ("1st", "F_1ST"),
    ("priority", "VNETD_PRIORITY")])
def test_field_names_are_valid_journal_names(key: str, name: str) -> None:
    assert field_name(key) == name


def test_renderer_sends_and_drops() -> None:
    sent: list[tuple[str, dict[str, str]]] = []
    renderer = JournalRenderer(send=lambda message, **f: sent.append((message, f)))
    with pytest.raises(structlog.DropEvent):
        renderer(None, "info", {"event": "ready", "level": "info", "host_id": "hv1"})
    assert sent == [("ready", {"HOST_ID": "hv1", "PRIORITY": "6", "SYSLOG_IDENTIFIER": "vnetd",
                               "EVENT": "ready", "MESSAGE_ID": MESSAGE_IDS["ready"]})]


def test_journal_stream_must_match_our_fds() -> None:
    assert not connected_to_journal({})
    assert not connected_to_journal({"JOURNAL_STREAM": "1:1"})
    st = os.fstat(2)
    assert connected_to_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})


def test_json_lines_on_stdout_including_stdlib_records() -> None:
    code = (
        "import logging, structlog\n"
        "from vnetd.config.settings import LogSettings\n"
        "from vnetd.service.logging import setup_logging\n"
        "print(setup_logging(LogSettings(format='auto', level='info')))\n"
        "structlog.get_logger('vnetd').info('ready', host_id='hv1')\n"
        "logging.getLogger('aio_pika').warning('lost %s', 'it')\n"
        "logging.getLogger('aio_pika').info('hidden')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=True, env={**os.environ, "JOURNAL_STREAM": ""})
    lines = proc.stdout.splitlines()
    assert lines[0] == "json"
    records = [json.loads(line) for line in lines[1:]]
    assert records[0]["event"] == "ready" and records[0]["host_id"] == "hv1"
    assert records[0]["level"] == "info" and "timestamp" in records[0]
    assert records[1]["event"] == "lost it" and records[1]["logger"] == "aio_pika"
    assert records[1]["level"] == "warning"
    assert len(records) == 2
    assert proc.stderr == ""
    assert LogSettings().format == "auto"

