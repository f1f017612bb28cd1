"""Least-privilege RabbitMQ users for a fleet: what an operator loads into the broker.

One user per host, one control-plane user, read-only event subscribers. What
each may do, as RabbitMQ permissions (regexes on resource names: configure,
write, read) and topic permissions (regexes on routing keys of a topic
exchange, checked on publish for `write` and on queue.bind for `read`):

- host `H`: declare, bind and consume only its own queues (`vnetd.host.H`,
  `vnetd.retry.H`); bind them to `vnetd.commands` only under `host.H` and
  `hosts.all` (topic read), publish nothing there (topic write `^$`); publish
  events to `vnetd.events` only under `H.*` (topic write); publish replies
  (the default exchange) and give up jobs to `vnetd.dead`.
- control plane: publish to `vnetd.commands` (any host), its own reply queues.
- subscriber: its own queues, bound to `vnetd.events` under any key; publishes
  nothing (topic write `^$` on both exchanges).

What permissions cannot close, and what closes it: replies need write on the
default exchange, through which any queue can be addressed by name; a host
could so put a job into another host's queue. RabbitMQ validates the `user_id`
property against the publisher's login, so a daemon with `[amqp]
allowed_senders = ["<control-plane user>"]` answers such a job `forbidden`
before any side effect. The hosts share `vnetd.dead` (configure, write and
read on that name, for the declarations every daemon makes): a host can read
the dead-lettered jobs of others.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import shlex
from dataclasses import dataclass
from typing import Any

from vnetd.amqp.topology import (
    BROADCAST_KEY,
    COMMANDS_EXCHANGE,
    DEAD_EXCHANGE,
    host_queue_name,
    host_routing_key,
    retry_queue_name,
)

EVENTS_EXCHANGE = "vnetd.events"
NOTHING = "^$"
# Reply and subscription queues clients make: server-named (amq.gen-...) or named by
# aio-pika's robust queues (amq_<hex>).
CLIENT_QUEUES = r"amq\.gen-.*|amq_[0-9a-f]+"


@dataclass(frozen=True)
class Grant:
    user: str
    configure: str
    write: str
    read: str
    topics: tuple[tuple[str, str, str], ...]  # (exchange, write, read)
    tags: str = ""


def _any_of(*names: str) -> str:
    return "^(" + "|".join(names) + ")$"


def host_grant(host_id: str) -> Grant:
    q, rq = re.escape(host_queue_name(host_id)), re.escape(retry_queue_name(host_id))
    ex = [re.escape(n) for n in (COMMANDS_EXCHANGE, EVENTS_EXCHANGE, DEAD_EXCHANGE)]
    h = re.escape(host_id)
    return Grant(
        user=host_id,
        configure=_any_of(q, rq, *ex),
        # vnetd.commands: the retry queue dead-letters to it, and RabbitMQ checks
        # write on a queue's dead-letter exchange at declaration; the topic write
        # `^$` below still refuses every command published there.
        write=_any_of(q, rq, "amq\\.default", *ex),
        read=_any_of(q, rq, re.escape(COMMANDS_EXCHANGE), ex[2]),
        topics=(
            (COMMANDS_EXCHANGE, NOTHING,
             _any_of(re.escape(host_routing_key(host_id)), re.escape(BROADCAST_KEY))),
            (EVENTS_EXCHANGE, f"^{h}\\..+$", NOTHING),
        ))


def control_grant(user: str) -> Grant:
    return Grant(
        user=user,
        configure=_any_of(re.escape(COMMANDS_EXCHANGE), CLIENT_QUEUES),
        write=_any_of(re.escape(COMMANDS_EXCHANGE), CLIENT_QUEUES),
        read=_any_of(CLIENT_QUEUES),
        topics=((COMMANDS_EXCHANGE, "^(host\\..+|hosts\\.all)$", NOTHING),
                (EVENTS_EXCHANGE, NOTHING, NOTHING)))


def subscriber_grant(user: str) -> Grant:
    # configure on vnetd.events: `vnetctl events` and most clients declare the
    # exchange (an idempotent declare needs it); nothing can be published.
    return Grant(
        user=user,
        configure=_any_of(re.escape(EVENTS_EXCHANGE), CLIENT_QUEUES),
        write=_any_of(CLIENT_QUEUES),
        read=_any_of(re.escape(EVENTS_EXCHANGE), CLIENT_QUEUES),
        topics=((EVENTS_EXCHANGE, NOTHING, ".*"), (COMMANDS_EXCHANGE, NOTHING, NOTHING)))


def grants(hosts: list[str], control: list[str], subscribers: list[str]) -> list[Grant]:
    return ([host_grant(h) for h in hosts] + [control_grant(c) for c in control]
            + [subscriber_grant(s) for s in subscribers])


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def rabbitmqctl_lines(gs: list[Grant], passwords: dict[str, str], vhost: str = "/") -> list[str]:
    lines = []
    for g in gs:
        q = shlex.quote
        lines.append(f"rabbitmqctl add_user {q(g.user)} {q(passwords[g.user])}")
        lines.append(f"rabbitmqctl set_permissions -p {q(vhost)} {q(g.user)} "
                     f"{q(g.configure)} {q(g.write)} {q(g.read)}")
        for exchange, write, read in g.topics:
            lines.append(f"rabbitmqctl set_topic_permissions -p {q(vhost)} {q(g.user)} "
                         f"{q(exchange)} {q(write)} {q(read)}")
    return lines


def definitions(gs: list[Grant], passwords: dict[str, str], vhost: str = "/") -> dict[str, Any]:
    """A definitions document (`rabbitmqctl import_definitions FILE`)."""
    return {
        "users": [{"name": g.user, "password_hash": password_hash(passwords[g.user]),
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": g.tags}
                  for g in gs],
        "vhosts": [{"name": vhost}],
        "permissions": [{"user": g.user, "vhost": vhost, "configure": g.configure,
                         "write": g.write, "read": g.read} for g in gs],
        "topic_permissions": [{"user": g.user, "vhost": vhost, "exchange": e, "write": w,
                               "read": r} for g in gs for e, w, r in g.topics],
    }
