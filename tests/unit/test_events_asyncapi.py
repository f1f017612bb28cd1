"""docs/asyncapi.yaml describes every op and every event type the code has.

The document itself was validated with the AsyncAPI parser (@asyncapi/parser 3,
`node check.mjs docs/asyncapi.yaml`: 0 errors); this test keeps it in step with
the code.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import yaml

from vnetd.contract.commands import OPS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "asyncapi.yaml"
EVENT_CHANNEL = "{host_id}.{event_type}"


def load() -> dict[str, Any]:
    data = yaml.safe_load(DOC.read_text())
    assert isinstance(data, dict)
    return data


def event_types_in_code() -> set[str]:
    """Every event type a producer in vnetd/ emits (string literals given to emit, and
    the libvirt watcher's table of types)."""
    found: set[str] = set()
    emit = re.compile(r"\bemit\(\s*\"([a-z]+\.[a-z_]+)\"")
    for path in (ROOT / "vnetd").rglob("*.py"):
        text = path.read_text()
        found.update(emit.findall(text))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "_EVENT_TYPES" for t in node.targets):
                assert isinstance(node.value, ast.Dict)
                found.update(v.value for v in node.value.values
                             if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return found


def test_document_basics() -> None:
    doc = load()
    assert doc["asyncapi"] == "2.6.0"
    assert set(doc["channels"]) >= {"host.{host_id}", "hosts.all", EVENT_CHANNEL}
    for name, channel in doc["channels"].items():
        amqp = channel["bindings"]["amqp"]
        if amqp["is"] == "routingKey":
            want = "vnetd.events" if name == EVENT_CHANNEL else "vnetd.commands"
            assert amqp["exchange"]["name"] == want
            assert amqp["exchange"]["type"] == "topic"


def test_every_event_type_in_code_is_documented() -> None:
    doc = load()
    in_code = event_types_in_code()
    assert {"link.added", "link.changed", "link.removed", "address.added", "address.removed",
            "command.completed", "command.failed", "host.started", "host.stopping",
            "host.heartbeat", "host.resync"} <= in_code
    channel = doc["channels"][EVENT_CHANNEL]
    enum = set(channel["parameters"]["event_type"]["schema"]["enum"])
    refs = {m["$ref"].rsplit("/", 1)[-1] for m in channel["subscribe"]["message"]["oneOf"]}
    messages = doc["components"]["messages"]
    assert in_code <= enum, sorted(in_code - enum)
    assert in_code <= refs, sorted(in_code - refs)
    for t in in_code:
        msg = messages[t]
        assert msg["contentType"] == "application/cloudevents+json"
        typed = msg["payload"]["allOf"][1]["properties"]["type"]["const"]
        assert typed == f"io.vnetd.{t}"


def test_every_op_is_documented() -> None:
    doc = load()
    ops = set(doc["components"]["schemas"]["Request"]["properties"]["op"]["enum"])
    assert set(OPS) <= ops, sorted(set(OPS) - ops)


def test_examples_are_well_formed_cloudevents() -> None:
    doc = load()
    envelope = doc["components"]["schemas"]["CloudEvent"]
    required = set(envelope["required"])
    for name, msg in doc["components"]["messages"].items():
        for example in msg.get("examples", []):
            payload = example["payload"]
            if msg["contentType"] != "application/cloudevents+json":
                continue
            assert required <= set(payload), (name, required - set(payload))
            assert payload["type"] == f"io.vnetd.{name}"
            assert payload["id"] == f"{payload['epoch']}-{payload['sequence']}"
            assert payload["source"].startswith("vnetd://")
            for key in payload:  # CloudEvents attribute names: lowercase alphanumeric
                assert re.fullmatch(r"[a-z0-9]+", key), key
