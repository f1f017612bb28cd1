"""vnetctl and `vnetd cleanup` find the config file the same way (vnetd/config/locate.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vnetd.cli import daemon, vnetctl
from vnetd.config import locate


def test_order_flag_env_checkout_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flag, env = tmp_path / "flag.toml", tmp_path / "env.toml"
    monkeypatch.setenv("VNETD_CONFIG", str(env))
    assert locate.find_config(str(flag)) == flag  # explicit, even when missing
    assert locate.find_config(None) == env
    monkeypatch.delenv("VNETD_CONFIG")
    checkout = locate.checkout_config()
    # This test runs from the checkout: its config/vnetd.toml comes before /etc/vnetd.
    assert checkout == Path(vnetctl.__file__).resolve().parents[2] / "config" / "vnetd.toml"
    assert locate.find_config(None) == checkout
    assert [how for how, _ in locate.candidates("x")] == ["--config", "checkout", "system"]


def test_vnetctl_reads_url_and_host_from_the_found_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "vnetd.toml"
    cfg.write_text('host_id = "hv-from-config"\n[amqp]\nurl = "amqp://u:p@10.0.0.1:5672/"\n')
    for name in ("VNETCTL_URL", "VNETCTL_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VNETD_CONFIG", str(cfg))
    ns = vnetctl.build_parser().parse_args(["bridge.list"])
    vnetctl.resolve_target(ns)
    assert (ns.url, ns.host) == ("amqp://u:p@10.0.0.1:5672/", "hv-from-config")
    ns = vnetctl.build_parser().parse_args(["--host", "other", "bridge.list"])
    vnetctl.resolve_target(ns)
    assert ns.host == "other"


def test_an_explicit_config_that_is_missing_exits_78(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    missing = str(tmp_path / "nope.toml")
    assert vnetctl.main(["--config", missing, "bridge.list"]) == 78
    assert "nope.toml" in capsys.readouterr().err
    monkeypatch.setenv("VNETD_CONFIG", missing)
    with pytest.raises(SystemExit) as exc:
        daemon.main(["cleanup", "--dry-run"])
    assert exc.value.code == 78
    assert "nope.toml does not exist" in capsys.readouterr().err


def test_vnetd_check_config_uses_the_same_search(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    import json
    cfg = tmp_path / "vnetd.toml"
    cfg.write_text('host_id = "hv-env"\n')
    monkeypatch.setenv("VNETD_CONFIG", str(cfg))
    assert daemon.main(["check-config"]) == 0
    assert json.loads(capsys.readouterr().out)["host_id"] == "hv-env"
    monkeypatch.delenv("VNETD_CONFIG")
    assert daemon.main(["check-config"]) == 0  # from the checkout's config/vnetd.toml
    assert json.loads(capsys.readouterr().out)["amqp"]["url"].startswith("amqp://")
