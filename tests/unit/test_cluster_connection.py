"""The cluster connection walks its URLs; the client splits and resends."""

from __future__ import annotations

from typing import cast

import pytest
from yarl import URL

from vnetd.amqp.connection import ClusterConnection, address_of
from vnetd.client import split_urls

URLS = tuple(URL(f"amqp://u:p@127.0.0.1:{p}/") for p in (5681, 5682, 5683))


def _conn() -> ClusterConnection:
    cls = cast(type[ClusterConnection],
               type("C", (ClusterConnection,), {"urls": URLS}))
    return cls(URLS[0], reconnect_interval=1.0)


async def test_each_attempt_goes_to_the_next_address() -> None:
    c = _conn()
    seen = []
    for _ in range(4):
        c.transport = None  # what aio-pika's reconnect loop does before each attempt
        seen.append(address_of(c.url))
    assert seen == ["127.0.0.1:5681", "127.0.0.1:5682", "127.0.0.1:5683", "127.0.0.1:5681"]


async def test_backoff_is_jittered_and_grows_only_after_a_full_round() -> None:
    c = _conn()
    first_round = [c.reconnect_interval for _ in range(3)]
    assert all(0.5 <= x <= 1.0 for x in first_round)
    assert len(set(first_round)) > 1, "no jitter"
    later = [c.reconnect_interval for _ in range(30)]
    assert max(later) > 1.0 and max(later) <= 30.0


@pytest.mark.parametrize(("given", "urls"), [
    ("amqp://a/", ["amqp://a/"]),
    ("amqp://a/, amqp://b/", ["amqp://a/", "amqp://b/"]),
    (["amqp://a/,amqp://b/", "amqp://c/"], ["amqp://a/", "amqp://b/", "amqp://c/"]),
])
def test_split_urls(given: str | list[str], urls: list[str]) -> None:
    assert split_urls(given) == urls


def test_no_url_is_an_error() -> None:
    with pytest.raises(ValueError, match="no broker URL"):
        split_urls(" , ")


def test_address_of_defaults_the_port() -> None:
    assert address_of("amqps://u:p@rmq1.example/") == "rmq1.example:5671"
    assert address_of("amqp://rmq1.example/") == "rmq1.example:5672"
