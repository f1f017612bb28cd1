"""The publisher's hand-built publish frames are byte for byte what pamqp builds."""

from __future__ import annotations

import aiormq
import pytest
from aiormq.abc import ChannelFrame
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from vnetd.events import frames


def pamqp_publish(channel: int, exchange: str, key: str, ctype: str, mode: int, mid: str,
                  body: bytes, max_body: int) -> bytes:
    parts = [aiormq.spec.Basic.Publish(exchange=exchange, routing_key=key, mandatory=False),
             ContentHeader(properties=aiormq.spec.Basic.Properties(
                 content_type=ctype, message_id=mid, delivery_mode=mode),
                 body_size=len(body))]
    parts += [ContentBody(body[i:i + max_body]) for i in range(0, len(body), max_body)]
    return ChannelFrame.marshall(channel_number=channel, frames=parts).payload


names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), max_size=60)
# pamqp checks exchange names (letters, digits, -_.:); a message id is never empty
# here (pamqp leaves an empty one out).
exchanges = st.from_regex(r"[a-zA-Z0-9_.:-]{0,60}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(channel=st.integers(1, 65535), exchange=exchanges, key=names,
       mid=names.filter(bool),
       mode=st.sampled_from([1, 2]), body=st.binary(max_size=3000),
       max_body=st.integers(100, 4096))
def test_same_bytes_as_pamqp(channel: int, exchange: str, key: str, mid: str, mode: int,
                             body: bytes, max_body: int) -> None:
    ctype = "application/cloudevents+json"
    assert frames.publish(channel, exchange, key, ctype, mode, mid, body, max_body) == \
        pamqp_publish(channel, exchange, key, ctype, mode, mid, body, max_body)


def test_a_short_string_over_255_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 255 bytes"):
        frames.publish(1, "x", "k" * 256, "t", 2, "m", b"{}", 1000)


@settings(max_examples=150, deadline=None)
@given(channel=st.integers(1, 65535), exchange=exchanges, keys=st.lists(names, min_size=1,
                                                                         max_size=4),
       mid=names.filter(bool), mode=st.sampled_from([1, 2]),
       bodies=st.lists(st.binary(max_size=3000), min_size=1, max_size=4),
       max_body=st.integers(100, 4096))
def test_the_cached_builder_makes_the_same_bytes(channel: int, exchange: str, keys: list[str],
                                                 mid: str, mode: int, bodies: list[bytes],
                                                 max_body: int) -> None:
    ctype = "application/cloudevents+json"
    build = frames.Publishes(channel, exchange, ctype, mode, max_body)
    for key in keys + keys:
        for body in bodies:
            assert build.build(key, mid, body) == \
                frames.publish(channel, exchange, key, ctype, mode, mid, body, max_body)
    with pytest.raises(ValueError, match="at most 255 bytes"):
        build.build("k" * 256, mid, b"{}")
    with pytest.raises(ValueError, match="at most 255 bytes"):
        build.build("k", "m" * 256, b"{}")
