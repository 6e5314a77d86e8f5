"""Retries for any consumer's handler: in-process, then non-blocking retry tiers, then a DLQ.

A handler is a function of one confluent-kafka ``Message``. :class:`RetryingHandler` wraps it:

1. **In-process retries** (tenacity): up to ``attempts`` calls with exponential backoff, for
   exceptions that are ``retryable``. They hold up the partition, so keep them short.
2. **Retry tiers**: still failing, the record is re-sent through the delay tiers of
   :mod:`kops.recipes.delay` (default ladder 1s, 10s, 1m, 10m) and comes back, when due, to
   its source topic (or ``retry_topic``) with ``kops.retry.attempt`` counting the failed
   deliveries. The source partition moves on at once: nothing behind the record waits.
3. **Dead letter**: after the last tier (or past the ``max_total`` retry budget) the record
   goes to ``<topic>.dlq`` with the headers documented in :mod:`kops.recipes.dlq`.

Fatal errors (``fatal`` types, anywhere in the ``__cause__`` chain, e.g. a value that cannot be
deserialized) and exceptions that are not ``retryable`` skip steps 1 and 2.

A retry that goes back to a shared source topic carries ``kops.retry.group``: kops-wrapped
consumers of *other* groups skip it, since they handled the original already.

:func:`run_retrying_consumer` is the matching consumer loop: subscribe, poll, handle, and
commit only once every record of the batch is handled or its retry/dead letter is
acknowledged by the broker (at least once: a crash re-delivers, never loses). With
``exactly_once`` each batch's retries, dead letters and offsets go in one transaction
instead (:mod:`kops.recipes.retry_exactly_once`): no retry or dead letter twice.

Example::

    from kops.recipes.retry import RetryPolicy, run_retrying_consumer

    def handle(msg):
        order = json.loads(msg.value())   # JSONDecodeError is fatal: straight to the DLQ
        charge(order)                     # anything else: retried

    run_retrying_consumer("127.0.0.1:9092", ["orders"], handle, group="billing",
                          policy=RetryPolicy(ladder=(1, 10, 60, 600)))
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import tenacity
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from confluent_kafka.serialization import SerializationError

from kops.client import (
    AdminSession,
    ClientSettings,
    ErrorWatch,
    KopsClientError,
    fetch_metadata,
    translate_error,
)
from kops.errors import KopsError
from kops.recipes import headers as h
from kops.recipes.delay import DelayTiers, ensure_tier_topics, send_delayed
from kops.recipes.dlq import dead_letter_headers, exception_name
from kops.recipes.loader import import_object
from kops.recipes.metrics import DLQ_DEAD_LETTERED, RETRY_ATTEMPTS, cause_of
from kops.recipes.retry_loop import ConsumerLoop

__all__ = [
    "DEFAULT_FATAL",
    "DEFAULT_LADDER",
    "DeserializationError",
    "FatalError",
    "Outcome",
    "RetryPolicy",
    "RetryStats",
    "RetryingHandler",
    "duration_seconds",
    "ensure_retry_topics",
    "import_object",
    "run_retrying_consumer",
    "wrap",
]

log = logging.getLogger("kops.retry")

Handler = Callable[[Message], Any]

#: Non-blocking retry delays in seconds (1s, 10s, 1m, 10m).
DEFAULT_LADDER: tuple[float, ...] = (1.0, 10.0, 60.0, 600.0)


class FatalError(KopsError):
    """Raise it (or a subclass) from a handler to send the record straight to the DLQ."""


class DeserializationError(FatalError):
    """The record's key or value cannot be decoded; retrying the same bytes cannot help."""


#: Errors that are deterministic for the same bytes, so retries are skipped by default.
DEFAULT_FATAL: tuple[type[BaseException], ...] = (
    FatalError,
    SerializationError,  # confluent-kafka's Key/ValueDeserializationError
    json.JSONDecodeError,
    UnicodeDecodeError,
)


def _exception_types(items: Iterable[type[BaseException] | str]) -> tuple[type[BaseException], ...]:
    out = []
    for item in items:
        obj = import_object(item) if isinstance(item, str) else item
        if not (isinstance(obj, type) and issubclass(obj, BaseException)):
            raise ValueError(f"{item!r} is not an exception class")
        out.append(obj)
    return tuple(out)


def duration_seconds(value: Any) -> float:
    """Seconds from a number or a duration such as ``"500ms"``, ``"10s"``, ``"1h"``."""
    if isinstance(value, int | float):
        return float(value)
    from kops.timeparse import parse_duration  # one spelling of durations with the tiers

    return parse_duration(str(value))


@dataclass(frozen=True)
class RetryPolicy:
    """What to retry, how often, and where records go.

    ``retry_topic`` and ``dlq_topic`` are templates over ``{topic}`` (the source topic);
    ``retry_topic=None`` sends retries back to the source topic itself.
    """

    attempts: int = 3  # in-process calls per delivery, the first included
    backoff: float = 0.2  # first in-process wait, seconds
    backoff_multiplier: float = 2.0  # 1 = fixed backoff
    backoff_max: float = 2.0
    retryable: tuple[type[BaseException], ...] = (Exception,)
    fatal: tuple[type[BaseException], ...] = DEFAULT_FATAL
    ladder: tuple[float, ...] = DEFAULT_LADDER
    retry_topic: str | None = None
    dlq_topic: str = "{topic}.dlq"
    max_total: float | None = None  # retry budget: seconds from the first failure

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if any(d <= 0 for d in self.ladder):
            raise ValueError("retry tier delays must be longer than 0")

    @classmethod
    def from_dict(cls, conf: Mapping[str, Any]) -> RetryPolicy:
        """From a recipe table: durations as ``"500ms"``/``"1m"``, the ladder as
        ``"1s,10s,1m"`` or a list, exception types as import paths."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(conf) - known
        if unknown:
            raise ValueError(f"unknown retry settings: {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for name, value in conf.items():
            if name in ("backoff", "backoff_max", "max_total"):
                kwargs[name] = None if value is None else duration_seconds(value)
            elif name == "ladder":
                items = value.replace(" ", "").split(",") if isinstance(value, str) else value
                kwargs[name] = tuple(duration_seconds(v) for v in items if v != "")
            elif name in ("retryable", "fatal"):
                kwargs[name] = _exception_types([value] if isinstance(value, str) else value)
            else:
                kwargs[name] = value if name != "retry_topic" else (value or None)
        return cls(**kwargs)

    def dlq_for(self, topic: str) -> str:
        return self.dlq_topic.format(topic=topic)

    def retry_target(self, topic: str) -> str:
        return self.retry_topic.format(topic=topic) if self.retry_topic else topic


class Outcome(enum.StrEnum):
    HANDLED = "handled"
    RETRY_SCHEDULED = "retry-scheduled"
    DEAD_LETTERED = "dead-lettered"
    SKIPPED = "skipped"  # a retry meant for another consumer group


@dataclass
class RetryStats:
    handled: int = 0
    retry_scheduled: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    handler_calls: int = 0
    #: Retries scheduled per ladder step (1 = the first tier).
    by_attempt: Counter = field(default_factory=Counter)

    def count(self, outcome: Outcome) -> None:
        name = outcome.value.replace("-", "_")
        setattr(self, name, getattr(self, name) + 1)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "by_attempt"},
                "by_attempt": dict(self.by_attempt)}  # fmt: skip


@dataclass(frozen=True)
class _Origin:
    """Where the record was consumed first, which a retried copy carries in headers."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None

    @classmethod
    def of(cls, msg: Message, hs: h.Headers) -> _Origin:
        topic = h.get(hs, h.RETRY_ORIGINAL_TOPIC)
        if topic:
            ts = h.get(hs, h.RETRY_ORIGINAL_TIMESTAMP)
            return cls(
                topic,
                int(h.get(hs, h.RETRY_ORIGINAL_PARTITION) or -1),
                int(h.get(hs, h.RETRY_ORIGINAL_OFFSET) or -1),
                int(ts) if ts else None,
            )
        ts_type, ts = msg.timestamp()
        return cls(msg.topic(), msg.partition(), msg.offset(), ts if ts_type else None)


def _causes(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__


class RetryingHandler:
    """``handler`` with the retry/DLQ policy around it. Call it with each consumed message;
    it returns an :class:`Outcome`. Retries and dead letters are only *enqueued* on
    ``producer``: call :meth:`flush` before committing the offsets of the records handled.
    """

    def __init__(
        self,
        handler: Handler,
        producer: Producer,
        *,
        group: str | None,
        policy: RetryPolicy | None = None,
        tiers: DelayTiers | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.handler = handler
        self.producer = producer
        self.group = group
        self.policy = policy or RetryPolicy()
        self.tiers = tiers or DelayTiers.parse()
        self.stats = RetryStats()
        self._sleep = sleep
        self._errors: list[str] = []
        self._lock = threading.Lock()
        # (topic, attempt) -> child of kops_retry_attempts_total, looked up once each.
        self._attempt_metrics: dict[tuple[str, int], Any] = {}

    # ---------------------------------------------------------------- classification

    def is_fatal(self, exc: BaseException) -> bool:
        return any(isinstance(e, self.policy.fatal) for e in _causes(exc))

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, self.policy.retryable) and not self.is_fatal(exc)

    def _retrying(self) -> tenacity.Retrying:
        p = self.policy
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(p.attempts),
            wait=tenacity.wait_exponential(
                multiplier=p.backoff, exp_base=p.backoff_multiplier, max=p.backoff_max
            ),
            retry=tenacity.retry_if_exception(self.is_retryable),
            sleep=self._sleep,
            reraise=True,
        )

    # ---------------------------------------------------------------- handling

    def __call__(self, msg: Message) -> Outcome:
        hs = msg.headers() or []
        for_group = h.get(hs, h.RETRY_GROUP)
        if for_group is not None and self.group is not None and for_group != self.group:
            self.stats.count(Outcome.SKIPPED)
            return Outcome.SKIPPED

        def call() -> Any:
            self.stats.handler_calls += 1
            return self.handler(msg)

        try:
            self._retrying()(call)
        except Exception as exc:
            outcome = self._failed(msg, hs, exc)
        else:
            outcome = Outcome.HANDLED
        self.stats.count(outcome)
        return outcome

    def _failed(self, msg: Message, hs: h.Headers, exc: Exception) -> Outcome:
        p = self.policy
        now = int(time.time() * 1000)
        origin = _Origin.of(msg, hs)
        prior = int(h.get(hs, h.RETRY_ATTEMPT) or 0)
        failures = prior + 1
        first = int(h.get(hs, h.RETRY_FIRST_FAILURE_MS) or now)
        reason = None
        if self.is_fatal(exc):
            reason = "fatal"
        elif not isinstance(exc, p.retryable):
            reason = "non-retryable"
        elif prior >= len(p.ladder):
            reason = "retries-exhausted"
        elif p.max_total is not None and (now - first) / 1000 + p.ladder[prior] > p.max_total:
            reason = "retry-budget"
        if reason is not None:
            headers = dead_letter_headers(
                hs, exc, topic=origin.topic, partition=origin.partition, offset=origin.offset,
                timestamp_ms=origin.timestamp_ms, group=self.group, attempts=failures,
                first_failure_ms=first, reason=reason, now_ms=now,
            )  # fmt: skip
            log.info("dead-lettering %s/%d@%d after %d deliveries (%s): %s", origin.topic,
                     origin.partition, origin.offset, failures, reason, exc)  # fmt: skip
            self._produce(p.dlq_for(origin.topic), msg, headers)
            DLQ_DEAD_LETTERED.labels(topic=origin.topic, cause=cause_of(exc)).inc()
            return Outcome.DEAD_LETTERED

        updates = {
            h.MESSAGE_ID: None,  # a new copy; the delay layer stamps its own id
            h.RETRY_ATTEMPT: str(failures),
            h.RETRY_FIRST_FAILURE_MS: str(first),
            h.RETRY_GROUP: self.group,
            h.RETRY_ORIGINAL_TOPIC: origin.topic,
            h.RETRY_ORIGINAL_PARTITION: str(origin.partition),
            h.RETRY_ORIGINAL_OFFSET: str(origin.offset),
            h.RETRY_ORIGINAL_TIMESTAMP: None
            if origin.timestamp_ms is None
            else str(origin.timestamp_ms),
            h.RETRY_LAST_ERROR: f"{exception_name(exc)}: {exc}"[:1024],
        }
        headers = h.replace(h.without_prefix(hs, ("kops.retry.", "kops.delay.")), updates)
        # The same retry of the same record always gets the same id, so a copy sent twice
        # (a crash between sending and committing) can be dropped by an idempotent consumer.
        ident = (
            f"kops-retry/{self.group}/{origin.topic}/{origin.partition}/{origin.offset}/{failures}"
        )
        send_delayed(
            self.producer, p.retry_target(origin.topic), msg.value(), key=msg.key(),
            headers=headers, delay=p.ladder[prior], tiers=self.tiers,
            message_id=uuid.uuid5(uuid.NAMESPACE_URL, ident).hex, on_delivery=self._delivered,
        )  # fmt: skip
        self.producer.poll(0)
        self.stats.by_attempt[failures] += 1
        child = self._attempt_metrics.get((origin.topic, failures))
        if child is None:
            child = RETRY_ATTEMPTS.labels(topic=origin.topic, attempt=str(failures))
            self._attempt_metrics[(origin.topic, failures)] = child
        child.inc()
        return Outcome.RETRY_SCHEDULED

    def _produce(self, topic: str, msg: Message, headers: list) -> None:
        kwargs: dict[str, Any] = {"headers": headers, "on_delivery": self._delivered}
        if msg.key() is not None:
            kwargs["key"] = msg.key()
        self.producer.produce(topic, msg.value(), **kwargs)
        self.producer.poll(0)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            with self._lock:
                self._errors.append(f"{msg.topic()}: {err.str()}")

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every retry and dead letter is acknowledged; raise if any failed (the
        caller must then not commit, so the records are consumed again)."""
        left = self.producer.flush(timeout)
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise KopsClientError(f"could not send a retry or dead letter: {errors[0]}")
        if left:
            raise KopsClientError(
                f"{left} retries or dead letters not acknowledged in {timeout:g}s"
            )


# --------------------------------------------------------------------------- topics


def ensure_retry_topics(
    target: ClientSettings | str,
    topics: Sequence[str],
    *,
    policy: RetryPolicy | None = None,
    tiers: DelayTiers | None = None,
) -> None:
    """Create what the policy needs when missing: the delay tier topics and, per source
    topic, its DLQ and retry topic (with the source topic's partition count)."""
    policy = policy or RetryPolicy()
    settings = ClientSettings.of(target)
    with AdminSession(settings) as admin:
        if policy.ladder:
            ensure_tier_topics(admin, tiers or DelayTiers.parse())
        md = admin.metadata()
        wanted: dict[str, int] = {}
        for topic in topics:
            parts = len(md.topics[topic].partitions) if topic in md.topics else 1
            wanted[policy.dlq_for(topic)] = parts
            if policy.retry_topic:
                wanted[policy.retry_target(topic)] = parts
        admin.ensure_topics([NewTopic(t, num_partitions=n) for t, n in wanted.items()])


# --------------------------------------------------------------------------- consumer loop

# Commit refused because the group moved on: the records will be re-delivered to the new
# owner, which is what at-least-once means; not a reason to stop.
_REBALANCE_CODES = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError._NO_OFFSET,
    }
)


def _commit(consumer: Consumer, offsets: dict[tuple[str, int], int]) -> None:
    if not offsets:
        return
    tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
    try:
        consumer.commit(offsets=tps, asynchronous=False)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and err.code() in _REBALANCE_CODES:
            log.warning("commit skipped (%s): records will be re-delivered", err.name())
            return
        raise translate_error(exc, "commit") from exc


def run_retrying_consumer(
    target: ClientSettings | str,
    topics: Sequence[str],
    handler: Handler | RetryingHandler,
    *,
    group: str,
    policy: RetryPolicy | None = None,
    tiers: DelayTiers | None = None,
    stop: threading.Event | None = None,
    max_records: int | None = None,
    idle_timeout: float | None = None,
    batch_size: int = 100,
    create_topics: bool = True,
    consumer_config: Mapping[str, Any] | None = None,
    on_outcome: Callable[[Message, Outcome], None] | None = None,
    exactly_once: bool = False,
    instance_id: str | None = None,
) -> RetryStats:
    """Consume ``topics`` (and their retry topics) in ``group`` with ``handler`` wrapped in the
    retry/DLQ policy, until ``stop`` is set, ``max_records`` records were processed, or no
    record arrived for ``idle_timeout`` seconds. Offsets are committed after each batch, once
    its retries and dead letters are acknowledged. Returns the counts.

    ``exactly_once``: read with ``isolation.level=read_committed`` and put each batch's
    retries, dead letters and consumer offsets in one transaction
    (:mod:`kops.recipes.retry_exactly_once`): read_committed readers of the retry, tier and
    DLQ topics see each retry and dead letter once, through crashes. The handler's own side
    effects stay at-least-once: after an aborted batch or a crash it runs again for those
    records. A cluster without transactions raises
    :class:`~kops.recipes.exactly_once.TransactionsUnsupported`; another process taking the
    transactional id raises :class:`~kops.recipes.exactly_once.ProducerFenced`.

    ``instance_id`` names this consumer: static group membership (``group.instance.id``: a
    restarted process takes its partitions back at once) and, with ``exactly_once``, a
    stable transactional id (a restarted process aborts what its predecessor left open at
    once; without it a killed process's open transaction holds read_committed readers back
    until ``transaction.timeout.ms``). Two running consumers must not share one.
    """
    settings = ClientSettings.of(target)
    policy = policy or (handler.policy if isinstance(handler, RetryingHandler) else RetryPolicy())
    if create_topics:
        ensure_retry_topics(settings, topics, policy=policy, tiers=tiers)
    watch = ErrorWatch(settings.bootstrap)
    # A subscribed topic created later is noticed at the next metadata refresh: 10 s, not
    # librdkafka's 5 minutes.
    extra: dict[str, Any] = {"topic.metadata.refresh.interval.ms": 10000}
    if instance_id:
        extra["group.instance.id"] = instance_id
    extra.update(consumer_config or {})
    config = settings.consumer_config(group, watch, **extra)
    subscribed = list(dict.fromkeys([*topics, *(policy.retry_target(t) for t in topics)]))
    loop = ConsumerLoop(stop, max_records, idle_timeout, batch_size, on_outcome)
    if exactly_once:
        from kops.recipes.retry_exactly_once import run_in_transactions

        return run_in_transactions(
            settings, config, subscribed, handler, loop, watch=watch, group=group,
            policy=policy, tiers=tiers, instance_id=instance_id,
        )  # fmt: skip
    if isinstance(handler, RetryingHandler):
        wrapped = handler
    else:
        producer = Producer(settings.producer_config(watch, **{"enable.idempotence": True}))
        wrapped = RetryingHandler(handler, producer, group=group, policy=policy, tiers=tiers)
    consumer = Consumer(config)
    offsets: dict[tuple[str, int], int] = {}
    try:
        fetch_metadata(consumer, watch, settings.timeout)
        consumer.subscribe(subscribed)
        for batch in loop.batches(consumer):
            for msg in loop.records(batch):
                outcome = wrapped(msg)
                offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
                loop.processed += 1
                if on_outcome is not None:
                    on_outcome(msg, outcome)
            if offsets:
                # Cleared first: if a retry or dead letter fails to send, these offsets
                # must never be committed (the finally below would otherwise do it).
                done, offsets = offsets, {}
                wrapped.flush()
                _commit(consumer, done)
    finally:
        try:
            if offsets:
                wrapped.flush()
                _commit(consumer, offsets)
        finally:
            consumer.close()
    return wrapped.stats


def wrap(
    handler: Handler,
    producer: Producer,
    *,
    group: str | None,
    policy: RetryPolicy | None = None,
    **overrides: Any,
) -> RetryingHandler:
    """Shorthand: ``wrap(handle, producer, group="g", attempts=5, ladder=(1, 5))``."""
    policy = replace(policy or RetryPolicy(), **overrides) if overrides else policy
    return RetryingHandler(handler, producer, group=group, policy=policy)
