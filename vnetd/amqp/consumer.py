"""Consumes jobs from the host queue: decode, validate, dispatch, reply, then ack."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import aio_pika
import aiormq
import orjson
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, ConsumerTag

from vnetd.amqp import failpoints, retry
from vnetd.amqp.dedupe import ReplyCache
from vnetd.amqp.outbox import Outbox
from vnetd.amqp.outcome import Action, Delivery, Outcome, failure, success
from vnetd.amqp.quarantine import Quarantine, job_key
from vnetd.amqp.renewing import RenewingPublisher
from vnetd.amqp.retry import RetryPolicy, delivery_of
from vnetd.contract.base import Command
from vnetd.contract.commands import OPS, parse_args, parse_request
from vnetd.contract.errors import Forbidden, Internal, InvalidArgument, VnetdError

log = structlog.get_logger("vnetd.jobs")

MAX_BODY_BYTES = 4 * 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What observers (events, metrics) learn about each finished job."""

    op: str
    message_id: str | None
    correlation_id: str | None
    ok: bool
    error_code: str | None
    duration: float
    subject: str | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    duplicate: bool = False


class JobObserver(Protocol):
    def job_finished(self, record: JobRecord) -> None: ...


Execute = Callable[[Command], Coroutine[Any, Any, dict[str, Any]]]


class JobConsumer:
    def __init__(self, channel: AbstractChannel, queue: AbstractQueue, execute: Execute,
                 cache: ReplyCache, host_id: str,
                 observers: list[JobObserver] | None = None,
                 quarantine: Quarantine | None = None,
                 retry_policy: RetryPolicy | None = None,
                 allowed_senders: frozenset[str] = frozenset(),
                 aside: RenewingPublisher | None = None) -> None:
        self.channel = channel
        self.queue = queue
        self.execute = execute
        self.cache = cache
        self.host_id = host_id
        self.observers = observers or []
        self.quarantine = quarantine or Quarantine(None, 0)
        self.retry = retry_policy
        self.allowed_senders = allowed_senders
        """Empty: any sender. Else the `user_id`s whose jobs run (RabbitMQ validates
        user_id against the publishing connection's login, so it cannot be forged)."""
        self.aside = aside
        """Where jobs set aside (retry queue, vnetd.dead) are published; None: on
        `channel` (the unit tests' fakes)."""
        self._tag: ConsumerTag | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._jobs: set[asyncio.Task[Any]] = set()
        """The jobs themselves (run_to_end's inner tasks), for `abandon`."""
        self.stopping = False
        self._outbox: Outbox | None = None
        """Replies, acks and rejects of the deliveries on the current channel."""
        self._loop: asyncio.AbstractEventLoop | None = None
        """Kept: asyncio.get_running_loop() costs a getpid() per call on Python 3.11."""

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tag = await self.queue.consume(self._on_message, no_ack=False)

    async def stop(self) -> None:
        """Stop taking new jobs; those in flight go on."""
        self.stopping = True
        if self._tag is not None:
            try:
                await self.queue.cancel(self._tag)
            except (aio_pika.exceptions.AMQPError, RuntimeError, ConnectionError) as exc:
                log.warning("consumer_cancel_failed", error=str(exc))
            self._tag = None

    async def drain(self, timeout: float) -> int:
        """Wait for jobs in flight; returns how many were left (to be redelivered)."""
        pending = {t for t in self._inflight if not t.done()}
        still: set[asyncio.Task[Any]] = set()
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
        if self._outbox is not None:  # the last acks, into the write queue before a close
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.flushed(), timeout)
        return len(still)

    async def abandon(self, timeout: float) -> int:
        """After a drain timeout: cancel the jobs still running and wait (at most
        `timeout`) for their deliveries to end, unacked; returns how many did not.

        Their messages are then redelivered when the channel closes, as after a
        kill, which every job survives (a device a cut-short creation left is
        finished by the redelivery). Ending them here, before the broker
        connection closes, matters: aiormq cancels a delivery still running at
        close with an exception of its own, which asyncio.run() then reports as
        unhandled when the loop shuts down.
        """
        pending = {t for t in self._inflight if not t.done()}
        for job in self._jobs:
            job.cancel()
        if not pending:
            return 0
        _, still = await asyncio.wait(pending, timeout=timeout)
        for task in still:  # cancelled, not between two jobs' steps: they end at once
            task.cancel()
        return len(still)

    async def _set_aside(self, publish: Callable[[AbstractChannel], Awaitable[T]]) -> T:
        """A publish to a quorum queue, on a channel replaced when nacked (renewing.py)."""
        if self.aside is None:
            return await publish(self.channel)
        return await self.aside.run(publish)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is not None:
            self._inflight.add(task)
        try:
            await self._handle(message)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        if self.allowed_senders and message.user_id not in self.allowed_senders:
            # Before the dedupe cache too: another sender's message_id must not
            # fetch an allowed sender's reply.
            await self._refuse_sender(message, started)
            return
        message_id = message.message_id
        cached = self.cache.get(message_id) if message_id else None
        if cached is None and message_id and (running := self.cache.running(message_id)):
            try:
                cached = await asyncio.shield(running)
            except asyncio.CancelledError:
                cached = None  # the first delivery did not finish: run this one
        if cached is not None:
            await self._reply(message, cached)
            self._ack(message)
            self._observe(message, "duplicate", None, None, started, duplicate=True)
            return

        op: str = "?"
        cmd: Command | None = None
        outcome: Outcome | None = None
        key = job_key(message_id, message.body, message.correlation_id, message.reply_to)
        if self.quarantine.is_poison(key):
            outcome = failure(Internal(
                f"this job crashed the daemon {self.quarantine.crashes(key)} times, the last "
                f"{self.quarantine.threshold} while running alone; it is quarantined in "
                "vnetd.dead and was not run again", crashes=self.quarantine.crashes(key)),
                malformed=True)
            await self._reply(message, outcome.reply)
            await self._settle(message, outcome)
            self.quarantine.settled(key)
            log.error("poison_job_dead_lettered", key=key, message_id=message_id)
            self._observe(message, _op_label(message.body), None, outcome, started)
            return
        if message_id:
            self.cache.start(message_id)
        delivery = delivery_of(message, self.retry)
        finished: list[Outcome] = []
        try:
            async with self.quarantine.running(key):
                op, decoded = self._decode(message)
                if isinstance(decoded, Outcome):
                    outcome = decoded
                else:
                    cmd = decoded
                    outcome = await self._run(cmd, delivery, finished)
                failpoints.hit("after_effect", op)
                if outcome.action is not Action.RETRY:  # a retried job is answered once, later
                    await self._reply(message, outcome.reply)
                failpoints.hit("before_ack", op)
                await self._settle(message, outcome)
        finally:
            if message_id:
                # Cancelled (the channel closed: a broker node went away) after the
                # job itself finished: its reply is remembered all the same, so the
                # redelivery is answered as the first delivery would have been,
                # not by running the job a second time.
                done = outcome or (finished[0] if finished else None)
                final = done is not None and done.action is not Action.RETRY
                self.cache.finish(message_id, done.reply if final and done else None,
                                  keep=cmd is None or not cmd.op_spec.read_only)
        # A job sent to run again later is not finished: observers (metrics, the
        # command.* events) hear of it once, with its final outcome.
        self._observe(message, op, cmd, outcome, started, attempt=delivery.attempt,
                      final=outcome is None or outcome.action is not Action.RETRY)

    async def _refuse_sender(self, message: AbstractIncomingMessage, started: float) -> None:
        refused = failure(Forbidden(
            "this host runs jobs only from its allowed senders; "
            f"this one came from {message.user_id or 'a sender without user_id'}",
            user_id=message.user_id))
        await self._reply(message, refused.reply)
        self._ack(message)
        log.warning("job_forbidden_sender", user_id=message.user_id,
                    message_id=message.message_id)
        self._observe(message, _op_label(message.body), None, refused, started)

    async def _run(self, cmd: Command, delivery: Delivery,
                   finished: list[Outcome] | None = None) -> Outcome:
        """The job's outcome; never raises (but for a cancellation, after which the
        outcome of the job, which ran to its end, is put in `finished`)."""
        loop = self._loop or asyncio.get_running_loop()
        job: asyncio.Task[dict[str, Any]] = loop.create_task(self.execute(cmd))
        self._jobs.add(job)  # only `abandon` (a stop after a drain timeout) cancels it
        job.add_done_callback(self._jobs.discard)
        try:
            await run_to_end(job)
        except asyncio.CancelledError:
            if finished is not None and job.done() and not job.cancelled():
                finished.append(self._outcome_of(job, cmd, delivery))
            raise
        except Exception:  # noqa: BLE001, S110 - the job's own failure: read from it below
            pass
        return self._outcome_of(job, cmd, delivery)

    def _outcome_of(self, job: asyncio.Future[dict[str, Any]], cmd: Command,
                    delivery: Delivery) -> Outcome:
        exc = job.exception()
        if exc is None:
            return success(job.result(), op=cmd.op, delivery=delivery)
        if isinstance(exc, VnetdError):
            return failure(exc, delivery=delivery)
        # the dispatcher turns bugs into Internal: one it missed
        log.error("job_crashed", op=cmd.op, error=repr(exc), exc_info=exc)
        return failure(Internal(f"{cmd.op} failed unexpectedly: {type(exc).__name__}",
                                op=cmd.op))

    def _decode(self, message: AbstractIncomingMessage) -> tuple[str, Command | Outcome]:
        """The op's metric label and the validated command, or the outcome of a request
        that is not one. The body is parsed once (the label of a rejected request used
        to parse it a second time)."""
        if len(message.body) > MAX_BODY_BYTES:
            return "invalid", failure(InvalidArgument(
                f"request body is {len(message.body)} bytes; the limit is {MAX_BODY_BYTES}"),
                malformed=True)
        try:
            body = orjson.loads(message.body)
        except orjson.JSONDecodeError as exc:
            return "invalid", failure(InvalidArgument(f"request body is not valid JSON: {exc}"),
                                      malformed=True)
        if not isinstance(body, dict):
            return "invalid", failure(InvalidArgument(
                f"request body must be a JSON object, got {type(body).__name__}"), malformed=True)
        op = body.get("op")
        try:
            args = _plain_envelope(body, op)
            # A plain envelope's checks are done: its args go straight to their model
            # (validating the envelope with pydantic too cost a second validation).
            cmd = parse_request(body) if args is None else parse_args(cast(str, op), args)
        except InvalidArgument as exc:
            return (op if isinstance(op, str) and op in OPS else "invalid"), failure(exc)
        return cmd.op, cmd

    def _box(self, message: AbstractIncomingMessage) -> Outbox:
        """The outbox of the channel `message` came on (its delivery tag means nothing
        on another); raises ChannelInvalidStateError when that channel is closed."""
        channel = cast(aiormq.Channel, message.channel)
        box = self._outbox
        if box is None or box.channel is not channel:
            box = self._outbox = Outbox.for_channel(channel, self.host_id)
        return box

    async def _reply(self, message: AbstractIncomingMessage, body: bytes) -> None:
        if not message.reply_to:
            return
        # Confirmed before the job is acked (the caller awaits the confirm); not
        # mandatory: a caller that has gone away must not hold the job. On the
        # delivery's own channel: if it closed, the job is not acked either, and
        # its redelivery is answered from the reply cache.
        await self._box(message).reply(message.reply_to, message.correlation_id, body)

    def _ack(self, message: AbstractIncomingMessage) -> None:
        """Queued for the next write; called only after the reply was confirmed."""
        self._box(message).ack(_tag_of(message))

    async def _settle(self, message: AbstractIncomingMessage, outcome: Outcome) -> None:
        reason = outcome.reason or "unknown"
        if outcome.action is Action.RETRY:
            if self.retry is None:  # failure() retries only when a policy gives attempts
                raise Internal("a retry was decided but the daemon has no retry queue")
            policy = self.retry
            attempt = await self._set_aside(
                lambda ch: retry.requeue_later(ch, policy, message, reason))
            log.info("job_retry_later", message_id=message.message_id, attempt=attempt,
                     of=self.retry.attempts, delay_s=self.retry.delay_seconds, reason=reason)
        elif outcome.action is Action.GIVE_UP:
            await self._set_aside(lambda ch: retry.give_up(ch, message, reason))
            log.warning("job_given_up", message_id=message.message_id, reason=reason)
        if outcome.action is Action.DEAD_LETTER:
            self._box(message).reject(_tag_of(message), requeue=False)
        else:
            self._ack(message)

    def _observe(self, message: AbstractIncomingMessage, op: str, cmd: Command | None,
                 outcome: Outcome | None, started: float, *, duplicate: bool = False,
                 attempt: int = 1, final: bool = True) -> None:
        record = JobRecord(
            op=op,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            ok=outcome.ok if outcome else True,
            error_code=outcome.error_code if outcome else None,
            duration=time.perf_counter() - started,
            subject=cmd.event_subject() if cmd is not None else None,
            result=outcome.result if outcome else None,
            error=outcome.error if outcome else None,
            duplicate=duplicate,
        )
        log.info("job", op=op, ok=record.ok, error=record.error_code,
                 duration_ms=round(record.duration * 1000, 3), message_id=record.message_id,
                 correlation_id=record.correlation_id, interface=record.subject,
                 redelivered=message.redelivered, duplicate=duplicate,
                 **({"attempt": attempt} if attempt > 1 else {}),
                 **({} if final else {"retry_later": True}))
        if not final:
            return
        for observer in self.observers:
            try:
                observer.job_finished(record)
            except Exception:
                log.exception("job_observer_failed", observer=type(observer).__name__)


def _tag_of(message: AbstractIncomingMessage) -> int:
    tag = message.delivery_tag
    if tag is None:  # only messages from basic.get lack one; consumed ones have it
        raise Internal("a consumed message without a delivery tag")
    return tag


def _plain_envelope(body: dict[str, Any], op: object) -> dict[str, Any] | None:
    """The args of a body that Envelope (strict, extra forbidden) accepts as it is: `op`
    a string of 1 to 64 characters, `args` an object or absent, nothing else. None for
    anything else, which parse_request then validates (and explains)."""
    args = body.get("args", _NO_ARGS)
    if (type(op) is not str or not 0 < len(op) <= 64 or type(args) is not dict
            or len(body) != (1 if args is _NO_ARGS else 2)):
        return None
    return {} if args is _NO_ARGS else args


_NO_ARGS: dict[str, Any] = {}


def _op_label(body: bytes) -> str:
    """The op a rejected job named, when it is a known one (bounded metric labels)."""
    try:
        op = orjson.loads(body).get("op")
    except (orjson.JSONDecodeError, AttributeError):
        return "invalid"
    return op if isinstance(op, str) and op in OPS else "invalid"


async def run_to_end(job: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Await a job that must not be abandoned half-way.

    aiormq cancels a delivery's task when its channel closes (a broker restart).
    A job cancelled between two netlink requests would leave a device created but
    not yet marked as vnetd's, which no later job may touch. So the job runs to its
    end; only then does the cancellation go on, and the unacked message is
    redelivered to a job that finds everything done.

    Only cancelling the job's own task (what JobConsumer.abandon does when the
    daemon stops after a drain timeout) ends it early.
    """
    task = asyncio.ensure_future(job)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                continue
            except Exception:  # noqa: BLE001 - the job's own failure; the cancellation wins
                break
        raise
