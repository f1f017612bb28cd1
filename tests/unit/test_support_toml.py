"""The test harness's own TOML writer must produce what tomllib (and so vnetd) reads."""

from __future__ import annotations

import tomllib

from tests.support import toml
from tests.support.daemon import default_config


def test_daemon_config_round_trips() -> None:
    cfg = toml.deep_merge(
        default_config(
            host_id="t-x-1", amqp_url="amqp://guest:guest@127.0.0.1:5672/", netns="vt-x-1"
        ),
        {"libvirt": {"enabled": True}, "new": {"nested": {"k": 'q"uote\\\n', "f": 1.5}}},
    )
    text = toml.dumps(cfg)
    assert tomllib.loads(text) == cfg
    assert cfg["libvirt"] == {"enabled": True, "uri": "qemu:///system"}


def test_deep_merge_does_not_mutate_inputs() -> None:
    base = {"a": {"b": 1}}
    out = toml.deep_merge(base, {"a": {"c": 2}}, None)
    assert out == {"a": {"b": 1, "c": 2}}
    assert base == {"a": {"b": 1}}
