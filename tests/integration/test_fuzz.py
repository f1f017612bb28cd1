"""Fuzzing the live daemon: mutated commands get well-formed replies, invalid ones change
nothing, and the daemon stays up. (The schema itself is fuzzed with Hypothesis in
tests/unit/test_validation_fuzz.py; this drives the mutations through RabbitMQ.)"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from tests.support import netns as ns
from tests.support.daemon import DaemonProcess
from tests.support.rpc import RawRpc

pytestmark = pytest.mark.integration

SEEDS = [
    {"op": "bridge.ensure", "args": {"name": "fzbr", "mtu": 1500, "stp": False}},
    {"op": "tap.ensure", "args": {"name": "fztap", "bridge": "fzbr", "mtu": 1500}},
    {"op": "port.attach", "args": {"name": "fztap", "bridge": "fzbr"}},
    {"op": "link.set", "args": {"name": "fztap", "up": True}},
    {"op": "batch", "args": {"commands": [{"op": "tap.ensure", "args": {"name": "fzt2"}}]}},
]
WEIRD: list[Any] = [None, True, -1, 0, 2**64, 1e308, float("nan"), "", "x" * 300, "ü", "a/b",
                    "lo", [], {}, [1, "a"], {"op": "x"}, "%", " ", "vnet0", "1500"]


def state(netns: str) -> dict[str, tuple[Any, ...]]:
    """What a job could change (not counters or carrier, which move on their own)."""
    return {name: (link.get("mtu"), link.get("master"), link.get("ifalias"),
                   link.get("address"), "UP" in link.get("flags", []))
            for name, link in ns.links(netns).items()}


def mutate(rng: random.Random, seed: dict[str, Any]) -> Any:
    doc = copy.deepcopy(seed)
    for _ in range(rng.randint(1, 3)):
        choice = rng.randrange(6)
        args = doc.get("args") if isinstance(doc, dict) else None
        if choice == 0 and isinstance(args, dict) and args:
            args[rng.choice(list(args))] = rng.choice(WEIRD)
        elif choice == 1 and isinstance(args, dict):
            args[rng.choice(["extra", "NAME", "mtu ", "__class__"])] = rng.choice(WEIRD)
        elif choice == 2 and isinstance(doc, dict):
            doc["op"] = rng.choice([*WEIRD, "tap.ensure", "tap.nope", "batch"])
        elif choice == 3 and isinstance(doc, dict):
            doc["args"] = rng.choice(WEIRD)
        elif choice == 4 and isinstance(args, dict) and args:
            del args[rng.choice(list(args))]
        else:
            doc = rng.choice([*WEIRD, doc])
    return doc


async def test_mutated_commands(rpc: RawRpc, daemon: DaemonProcess, netns: str) -> None:
    rng = random.Random(20261127)
    codes: dict[str, int] = {}
    for i in range(300):
        doc = mutate(rng, rng.choice(SEEDS))
        body = json.dumps(doc, allow_nan=True).encode()
        before = state(netns)
        reply = await rpc.call_raw(daemon.host_id, body, timeout=10)
        assert isinstance(reply.get("ok"), bool), (doc, reply)
        if reply["ok"]:
            assert isinstance(reply["result"], dict)
            codes["ok"] = codes.get("ok", 0) + 1
            continue
        err = reply["error"]
        assert set(err) == {"code", "message", "details"} and err["message"], (doc, reply)
        assert err["code"] != "internal", (doc, reply)
        codes[err["code"]] = codes.get(err["code"], 0) + 1
        if err["code"] == "invalid_argument":
            assert state(netns) == before, (i, doc)
    assert (await rpc.call(daemon.host_id, "host.health"))["ok"] is True
    assert daemon.running
    assert codes.get("invalid_argument", 0) > 100  # the fuzzer really produced bad input
