"""`vnetd check-config` and the shipped config/vnetd.toml.

The shipped file documents every key with its default: loading it must give
exactly the built-in defaults, and every model field must appear in it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tests.support.env import REPO_ROOT
from vnetd.config import Settings, load_settings

SHIPPED = REPO_ROOT / "config" / "vnetd.toml"
EX_CONFIG = 78


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("VNETD_"):
            monkeypatch.delenv(key)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("VNETD_")}


def check_config(path: Path | str, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vnetd.cli.daemon", "check-config", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False, env={**_env(), **(env or {})})


def test_shipped_file_holds_exactly_the_defaults() -> None:
    shipped = load_settings(SHIPPED).model_dump(mode="json")
    defaults = load_settings(None).model_dump(mode="json")
    assert shipped == defaults


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _fields(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_every_key_is_documented_in_the_shipped_file() -> None:
    text = SHIPPED.read_text()
    data = tomllib.loads(text)
    missing = []
    for key in _fields(Settings):
        section, _, name = key.rpartition(".")
        if section:
            present = name in data.get(section, {})
        else:  # host_id defaults to the hostname: shown commented out
            present = re.search(rf"^#?\s*{name}\s*=", text, re.M) is not None
        if not present:
            missing.append(key)
    assert missing == []


def test_check_config_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    cfg = tmp_path / "vnetd.toml"
    cfg.write_text('host_id = "hv1"\n[amqp]\nurl = "amqp://vnetd:s3cret@broker:5672/"\n'
                   'prefetch = 64\n')
    proc = check_config(cfg, {"VNETD_METRICS__ENABLED": "true", "VNETD_AMQP__PREFETCH": "32"})
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    assert data["host_id"] == "hv1"
    assert data["amqp"]["url"] == "amqp://vnetd:****@broker:5672/"
    assert "s3cret" not in proc.stdout
    assert data["amqp"]["prefetch"] == 32  # the environment beats the file
    assert data["metrics"]["enabled"] is True
    assert data["metrics"]["port"] == 9477  # untouched keys keep their defaults


@pytest.mark.parametrize(("text", "env", "named"), [
    ("[amqp]\nprefetch = 0\n", {}, "amqp.prefetch"),                       # out of range
    ("[amqp]\nprefetch = \"many\"\n", {}, "amqp.prefetch"),                # wrong type
    ("[log]\nformat = \"xml\"\n", {}, "log.format"),                        # not a choice
    ("[metrics]\nport = 0\n", {}, "metrics.port"),                          # below range
    ("[amqp]\ndrain_timeout_seconds = -1\n", {}, "amqp.drain_timeout_seconds"),
    ('host_id = "hv/1"\n', {}, "host_id"),                                  # bad pattern
    ("[policy]\nprotected = \"lo\"\n", {}, "policy.protected"),             # not a list
    ("[amqp]\nprefetchh = 5\n", {}, "amqp.prefetchh"),                      # unknown key
    ("[nosuch]\nx = 1\n", {}, "nosuch"),                                    # unknown section
    ("", {"VNETD_METRICS__PORT": "http"}, "metrics.port"),                  # bad env value
    ("", {"VNETD_LOG__LEVEL": "loud"}, "log.level"),
    ("[amqp\nprefetch = 1\n", {}, "vnetd.toml"),                            # TOML syntax
])
def test_bad_config_exits_78_naming_the_key(tmp_path: Path, text: str, env: dict[str, str],
                                            named: str) -> None:
    cfg = tmp_path / "vnetd.toml"
    cfg.write_text(text)
    proc = check_config(cfg, env)
    assert proc.returncode == EX_CONFIG, (proc.stdout, proc.stderr)
    assert named in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr


def test_missing_file_exits_78(tmp_path: Path) -> None:
    proc = check_config(tmp_path / "absent.toml")
    assert proc.returncode == EX_CONFIG
    assert "absent.toml" in proc.stderr


def test_run_with_a_bad_config_exits_78_before_anything_starts(tmp_path: Path) -> None:
    cfg = tmp_path / "vnetd.toml"
    cfg.write_text("[amqp]\nprefetch = -5\n")
    proc = subprocess.run([sys.executable, "-m", "vnetd.cli.daemon", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60, check=False, env=_env())
    assert proc.returncode == EX_CONFIG
    assert "amqp.prefetch" in proc.stderr
