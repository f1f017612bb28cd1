"""load_settings: defaults, the TOML file, VNETD_* overrides, and errors naming the key."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from vnetd.config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab exports VNETD_LAB_* and friends; keep only what each test sets."""
    for key in list(os.environ):
        if key.upper().startswith("VNETD_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vnetd.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = load_settings(None)
    assert isinstance(s, Settings)
    assert s.host_id == socket.gethostname()
    assert s.amqp.prefetch == 128
    assert s.amqp.url.get_secret_value() == "amqp://guest:guest@127.0.0.1:5672/"
    assert s.policy.protected == ("lo",)
    assert s.policy.attachable == ()
    assert s.netlink.netns == ""
    assert s.log.format == "auto"


def test_settings_are_frozen() -> None:
    s = load_settings(None)
    with pytest.raises(ValueError, match="frozen"):
        s.host_id = "other"  # type: ignore[misc]


def test_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
host_id = "hv7"
[amqp]
prefetch = 64
url = "amqp://vnetd:s3cret@broker.example:5671/prod"
[policy]
attachable = ["eth1", "bond*"]
protected = ["lo", "mgmt*"]
[libvirt]
enabled = false
""")
    s = load_settings(path)
    assert s.host_id == "hv7"
    assert s.amqp.prefetch == 64
    assert s.amqp.delivery_limit == 5, "keys the file leaves out keep their default"
    assert s.policy.attachable == ("eth1", "bond*")
    assert s.policy.protected == ("lo", "mgmt*")
    assert s.libvirt.enabled is False


def test_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[amqp]\nprefetch = 64\nurl = "amqp://a:b@h/"\n')
    monkeypatch.setenv("VNETD_AMQP__PREFETCH", "7")
    s = load_settings(path)
    assert s.amqp.prefetch == 7
    assert s.amqp.url.get_secret_value() == "amqp://a:b@h/", "the rest of [amqp] is kept"


def test_env_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VNETD_AMQP__PREFETCH", "9")
    monkeypatch.setenv("VNETD_HOST_ID", "hv9")
    s = load_settings(None)
    assert (s.amqp.prefetch, s.host_id) == (9, "hv9")


def test_a_file_of_an_earlier_load_is_forgotten(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, 'host_id = "hv7"\n')).host_id == "hv7"
    assert load_settings(None).host_id == socket.gethostname()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[amqp]\nprefetch = 0\n", "amqp.prefetch"),
        ("[amqp]\nprefetch = \"many\"\n", "amqp.prefetch"),
        ("[metrics]\nport = 70000\n", "metrics.port"),
        ("[log]\nlevel = \"loud\"\n", "log.level"),
        ('host_id = "hv 1"\n', "host_id"),
        ('[netlink]\nnetns = "/run/netns/x"\n', "netlink"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid configuration: {re.escape(key)}"):
        load_settings(write(tmp_path, text))


def test_bad_env_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VNETD_AMQP__PREFETCH", "lots")
    with pytest.raises(ConfigError, match=r"amqp\.prefetch"):
        load_settings(None)


def test_bad_env_list_names_the_key_and_not_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VNETD_POLICY__PROTECTED", "lo")  # not a JSON list
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    message = str(info.value)
    assert "policy" in message
    assert "cannot read None" not in message, message


@pytest.mark.parametrize(
    ("text", "key"),
    [("colour = \"blue\"\n", "colour"), ("[amqp]\nprefetchh = 5\n", "amqp.prefetchh"),
     ("[nosuch]\nx = 1\n", "nosuch")],
)
def test_unknown_keys_are_refused(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"{re.escape(key)}: Extra inputs are not permitted"):
        load_settings(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_toml_syntax_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(write(tmp_path, "[amqp\nprefetch = 1\n"))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://vnetd:s3cret@broker.example:5671/prod", "amqp://vnetd:****@broker.example:5671/prod"),
        ("amqps://u:p@h/", "amqps://u:****@h/"),
        ("amqp://h:5672/", "amqp://h:5672/"),
        ("amqp://vnetd:s3cret@[fd00::1]:5672/", "amqp://vnetd:****@[fd00::1]:5672/"),
    ],
)
def test_public_dict_masks_the_password(monkeypatch: pytest.MonkeyPatch, url: str,
                                        shown: str) -> None:
    monkeypatch.setenv("VNETD_AMQP__URL", url)
    data = load_settings(None).public_dict()
    assert data["amqp"]["url"] == shown
    assert "s3cret" not in repr(data)
    assert data["amqp"]["prefetch"] == 128
