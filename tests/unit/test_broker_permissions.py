"""`vnetd broker-permissions`: what each user may do, as RabbitMQ regexes."""

from __future__ import annotations

import base64
import hashlib
import re
import shlex

from vnetd.amqp import permissions as p


def test_a_host_reads_and_binds_only_its_own() -> None:
    g = p.host_grant("hv1")
    assert re.fullmatch(g.read, "vnetd.host.hv1")
    assert not re.fullmatch(g.read, "vnetd.host.hv2")
    assert not re.fullmatch(g.read, "vnetd.host.hv11")
    assert not re.fullmatch(g.configure, "vnetd.host.hv2")
    topics = {e: (w, r) for e, w, r in g.topics}
    write, read = topics["vnetd.commands"]
    assert re.fullmatch(read, "host.hv1") and re.fullmatch(read, "hosts.all")
    assert not re.fullmatch(read, "host.hv2") and not re.fullmatch(read, "host.#")
    assert not re.fullmatch(write, "host.hv2")  # it publishes no command
    ev_write, _ = topics["vnetd.events"]
    assert re.fullmatch(ev_write, "hv1.link.added")
    assert not re.fullmatch(ev_write, "hv2.link.added")
    assert not re.fullmatch(ev_write, "hv1x.link.added")


def test_a_dot_in_a_host_id_is_not_a_wildcard() -> None:
    g = p.host_grant("a.b")
    assert not re.fullmatch(g.read, "vnetd.host.aXb")


def test_subscribers_publish_nothing() -> None:
    g = p.subscriber_grant("mon")
    for _exchange, write, _read in g.topics:
        assert not re.fullmatch(write, "hv1.link.added")
        assert not re.fullmatch(write, "host.hv1")
    assert not re.fullmatch(g.write, "vnetd.commands")


def test_rabbitmqctl_lines_and_definitions_agree() -> None:
    gs = p.grants(["hv1"], ["ctl"], ["mon"])
    pw = {"hv1": "a b'c", "ctl": "x", "mon": "y"}
    lines = [shlex.split(x) for x in p.rabbitmqctl_lines(gs, pw)]
    assert ["rabbitmqctl", "add_user", "hv1", "a b'c"] in lines
    perms = [x for x in lines if x[1] == "set_permissions"]
    d = p.definitions(gs, pw)
    assert [[x["user"], x["configure"], x["write"], x["read"]] for x in d["permissions"]] == \
        [[x[4], x[5], x[6], x[7]] for x in perms]
    assert len(d["topic_permissions"]) == sum(x[1] == "set_topic_permissions" for x in lines)


def test_password_hash_is_rabbitmqs_sha256() -> None:
    salt = b"\x01\x02\x03\x04"
    raw = base64.b64decode(p.password_hash("secret", salt))
    assert raw[:4] == salt and raw[4:] == hashlib.sha256(salt + b"secret").digest()
