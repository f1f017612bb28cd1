"""[amqp] urls, allowed_senders and TLS keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from vnetd.amqp.tls import BrokerTlsError, tls_context
from vnetd.config import load_settings

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    for key in list(os.environ):
        if key.startswith("VNETD_"):
            monkeypatch.delenv(key, raising=False)


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    p = tmp_path / "c.toml"
    p.write_text(text)
    return load_settings(p)


def test_urls_win_over_url_and_are_masked(tmp_path: Path) -> None:
    s = _load(tmp_path, '[amqp]\nurl = "amqp://a:b@one/"\n'
                        'urls = ["amqp://h:pw1@n1:5672/", "amqp://h:pw2@n2:5672/"]\n')
    assert s.amqp.broker_urls() == ["amqp://h:pw1@n1:5672/", "amqp://h:pw2@n2:5672/"]
    shown = s.public_dict()["amqp"]["urls"]
    assert shown == ["amqp://h:****@n1:5672/", "amqp://h:****@n2:5672/"]


def test_url_alone_still_works(tmp_path: Path) -> None:
    s = _load(tmp_path, '[amqp]\nurl = "amqp://a:b@one/"\n')
    assert s.amqp.broker_urls() == ["amqp://a:b@one/"]
    assert s.amqp.quorum_initial_group_size == 3
    assert s.amqp.allowed_senders == ()


def test_no_tls_context_for_plain_urls(tmp_path: Path) -> None:
    assert tls_context(_load(tmp_path, "").amqp) is None


def test_tls_verifies_by_default(tmp_path: Path) -> None:
    import ssl
    ctx = tls_context(_load(tmp_path, '[amqp]\nurl = "amqps://a:b@one/"\n').amqp)
    assert ctx is not None and ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname


def test_a_missing_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    s = _load(tmp_path, f'[amqp]\nurl = "amqps://a:b@one/"\nca_file = "{tmp_path}/none.pem"\n')
    with pytest.raises(BrokerTlsError, match="TLS files cannot be used"):
        tls_context(s.amqp)
