"""Tiered delay topics: send a record now, have it delivered to its topic later.

Kafka has no per-record delay, so kops uses a ladder of *tier topics*, one per fixed delay
(RocketMQ's 18 levels by default: 1s 5s 10s ... 1h 2h). A record sent with a delay goes to
the largest tier not longer than the delay; the tier's forwarder (see
:mod:`kops.recipes.delay.forwarder`) moves it on when it is due: to its target topic, or to a
smaller tier when time remains ("cascading"), so any delay up to ``max_delay`` works.

Everything here speaks only the Kafka protocol, so it runs unchanged against a real cluster::

    from confluent_kafka import Producer
    from kops.recipes.delay import DelayTiers, ensure_tier_topics, send_delayed

    tiers = DelayTiers.parse()                       # the default 18 tiers
    ensure_tier_topics("127.0.0.1:9092", tiers)
    producer = Producer({"bootstrap.servers": "127.0.0.1:9092", "enable.idempotence": True})
    msg_id = send_delayed(producer, "orders.check", b"order-42", key=b"42", delay=1800)
    producer.flush()
    cancel_delayed(producer, msg_id)                 # changed our mind

Headers stamped on the record (names in :mod:`kops.recipes.headers`): the message id
(kept when the record already has one), the target topic, the due time and the send time
(epoch ms). They stay on the delivered record, so a consumer can measure lateness and drop
duplicates by message id.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kops.client import (
    DEFAULT_TIMEOUT,
    AdminSession,
    ClientSettings,
    ErrorWatch,
    TopicAlreadyExists,
    fetch_metadata,
    translate_error,
)
from kops.produce import produce_with_room
from kops.recipes import headers as h
from kops.timeparse import parse_duration

__all__ = [
    "CANCEL_TOPIC",
    "DEFAULT_MAX_DELAY",
    "DEFAULT_TEMPLATE",
    "DEFAULT_TIERS",
    "DLQ_TOPIC",
    "FORWARDER_GROUP",
    "STATS_TOPIC",
    "DelayTiers",
    "cancel_delayed",
    "check_target_exists",
    "ensure_tier_topics",
    "format_tier",
    "new_message_id",
    "send_delayed",
]

#: RocketMQ 4's delay levels, which kops uses as its default tiers.
DEFAULT_TIERS: tuple[str, ...] = (
    "1s", "5s", "10s", "30s", "1m", "2m", "3m", "4m", "5m",
    "6m", "7m", "8m", "9m", "10m", "20m", "30m", "1h", "2h",
)  # fmt: skip
#: Tier topic names; ``{tier}`` is the tier label (``1s``, ``5m``, ``2h``). The seed's
#: ``topic_1s`` style is ``DelayTiers.parse(template="topic_{tier}")``.
DEFAULT_TEMPLATE = "kops.delay.{tier}"
#: Longest delay accepted by default; longer delays cascade through the largest tier.
DEFAULT_MAX_DELAY = 24 * 3600.0
#: Compacted topic keyed by message id: a record there is never delivered.
CANCEL_TOPIC = "kops.delay.cancel"
#: Compacted topic where forwarders publish per-tier lateness samples for ``delay status``.
STATS_TOPIC = "kops.delay.stats"
#: Dead letters of the delay queue: records whose target cannot take them (no such topic,
#: record too large, not authorised), with the error in ``kops.dlq.*`` headers.
DLQ_TOPIC = "kops.delay.dlq"
#: Consumer group of every tier forwarder.
FORWARDER_GROUP = "kops.delay.forwarders"

_UNITS = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0))


def format_tier(seconds: float) -> str:
    """The canonical label of a tier: ``1s``, ``90s``, ``5m``, ``2h``, ``1d``, ``500ms``.

    Labels are normalised (``60s`` -> ``1m``) so that senders and forwarders configured with
    different spellings of the same tier agree on topic names.
    """
    ms = round(seconds * 1000)
    if ms <= 0:
        raise ValueError("a tier must be longer than 0")
    for unit, size in _UNITS:
        if ms % round(size * 1000) == 0:
            return f"{ms // round(size * 1000)}{unit}"
    return f"{ms}ms"


def _as_seconds(value: float | timedelta | str) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        return parse_duration(value)
    return float(value)


@dataclass(frozen=True)
class DelayTiers:
    """The tier ladder: delays in seconds (ascending), topic naming, and the longest delay.

    ``template`` may use ``{tier}`` (label such as ``5m``), ``{seconds}`` (whole seconds
    when integral) and ``{ms}``.
    """

    seconds: tuple[float, ...] = tuple(parse_duration(t) for t in DEFAULT_TIERS)
    template: str = DEFAULT_TEMPLATE
    max_delay: float = DEFAULT_MAX_DELAY

    def __post_init__(self) -> None:
        if not self.seconds:
            raise ValueError("at least one delay tier is needed")
        ordered = tuple(sorted({float(s) for s in self.seconds}))
        if ordered[0] <= 0:
            raise ValueError("delay tiers must be longer than 0")
        object.__setattr__(self, "seconds", ordered)
        if not any(f"{{{k}}}" in self.template for k in ("tier", "seconds", "ms")):
            raise ValueError(f"tier topic template {self.template!r} needs {{tier}}")
        if self.max_delay < ordered[-1]:
            raise ValueError(
                f"max delay {self.max_delay:g}s is shorter than the largest tier "
                f"({format_tier(ordered[-1])})"
            )
        names = [self.topic(s) for s in ordered]
        if len(set(names)) != len(names):
            raise ValueError(f"tier topic template {self.template!r} gives duplicate names")

    @classmethod
    def parse(
        cls,
        spec: str | Sequence[str | float] | None = None,
        template: str = DEFAULT_TEMPLATE,
        max_delay: float | timedelta | str = DEFAULT_MAX_DELAY,
    ) -> DelayTiers:
        """Tiers from ``"1s,5s,1m"``, ``["1s", "5s"]``, ``[1, 5]`` or None (the defaults)."""
        if spec is None:
            items: Sequence[str | float] = DEFAULT_TIERS
        elif isinstance(spec, str):
            items = [p for p in spec.replace(" ", ",").split(",") if p]
        else:
            items = spec
        secs = tuple(_as_seconds(i) if isinstance(i, str) else float(i) for i in items)
        return cls(
            seconds=secs, template=template or DEFAULT_TEMPLATE, max_delay=_as_seconds(max_delay)
        )

    def label(self, seconds: float) -> str:
        return format_tier(seconds)

    def topic(self, seconds: float) -> str:
        """Topic name of the tier of ``seconds``."""
        ms = round(seconds * 1000)
        whole = ms // 1000 if ms % 1000 == 0 else seconds
        return self.template.format(tier=format_tier(seconds), seconds=whole, ms=ms)

    def topics(self) -> list[str]:
        """Every tier topic, shortest delay first."""
        return [self.topic(s) for s in self.seconds]

    def tier_for(self, remaining_seconds: float) -> float:
        """The largest tier not longer than ``remaining_seconds`` (the smallest if shorter)."""
        best = self.seconds[0]
        for s in self.seconds:
            if s <= remaining_seconds + 1e-9:
                best = s
        return best

    def topic_for(self, remaining_seconds: float) -> str:
        """Topic of :meth:`tier_for`."""
        return self.topic(self.tier_for(remaining_seconds))

    def tier_of_topic(self, topic: str) -> float | None:
        """The tier (seconds) a topic belongs to, or None when it is not a tier topic."""
        for s in self.seconds:
            if self.topic(s) == topic:
                return s
        return None

    def describe(self) -> str:
        return ",".join(format_tier(s) for s in self.seconds)


def new_message_id() -> str:
    """A fresh message id: 32 hex digits, unique without coordination."""
    return uuid.uuid4().hex


def _now_ms() -> int:
    return int(time.time() * 1000)


def _due_ms(delay: float | timedelta | None, deliver_at: datetime | None, now_ms: int) -> int:
    if (delay is None) == (deliver_at is None):
        raise ValueError("give exactly one of delay= and deliver_at=")
    if deliver_at is not None:
        if deliver_at.tzinfo is None:
            deliver_at = deliver_at.replace(tzinfo=UTC)  # naive means UTC, as in the CLI
        return math.ceil(deliver_at.timestamp() * 1000)
    seconds = _as_seconds(delay)  # type: ignore[arg-type]
    if seconds < 0:
        raise ValueError(f"delay must not be negative, got {seconds:g}s")
    return now_ms + math.ceil(seconds * 1000)


# (id(producer), topic) -> monotonic time until which the topic is known to exist.
_KNOWN_TARGETS: dict[tuple[int, str], float] = {}
_KNOWN_FOR = 60.0


def check_target_exists(producer: Producer, topic: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Raise :class:`kops.client.UnknownTopic` unless ``topic`` exists on the cluster.

    A topic seen to exist is remembered for a minute per producer, so sending many records
    costs one metadata request. Raises :class:`kops.client.BrokerUnavailable` when no broker
    answers within ``timeout``.
    """
    key = (id(producer), topic)
    now = time.monotonic()
    if _KNOWN_TARGETS.get(key, 0.0) > now:
        return
    fetch_metadata(producer, ErrorWatch("the cluster"), timeout, topic)
    if len(_KNOWN_TARGETS) > 10000:
        _KNOWN_TARGETS.clear()
    _KNOWN_TARGETS[key] = now + _KNOWN_FOR


def send_delayed(
    producer: Producer,
    topic: str,
    value: bytes | None,
    *,
    key: bytes | None = None,
    headers: h.Headers | None = None,
    delay: float | timedelta | None = None,
    deliver_at: datetime | None = None,
    tiers: DelayTiers | None = None,
    message_id: str | None = None,
    on_delivery: Callable[[Any, Any], None] | None = None,
    check_target: bool = True,
) -> str:
    """Send a record to be delivered to ``topic`` after ``delay`` or at ``deliver_at``.

    Key, value and headers are kept. The record goes to the largest tier not longer than the
    delay; a record already due (delay 0 or a past ``deliver_at``) goes straight to ``topic``.
    Returns the message id: ``message_id`` if given, else the record's existing
    :data:`~kops.recipes.headers.MESSAGE_ID` header, else a new one. Like
    ``Producer.produce`` this only enqueues: call ``flush()``/``poll()`` and check
    ``on_delivery`` for the outcome; a full local queue is waited out
    (:func:`kops.produce.produce_with_room`), never dropped. Raises ValueError for a delay
    beyond ``tiers.max_delay``.

    ``topic`` must exist (:class:`kops.client.UnknownTopic` otherwise, checked once a minute
    per producer) unless ``check_target=False``, e.g. for a topic created before the record
    is due. A record whose target is missing when it falls due goes to the delay
    dead-letter topic (:data:`DLQ_TOPIC`).
    """
    tiers = tiers or DelayTiers.parse()
    now = _now_ms()
    due = _due_ms(delay, deliver_at, now)
    remaining = (due - now) / 1000
    if remaining > tiers.max_delay:
        raise ValueError(f"delay of {remaining:g}s is longer than the maximum {tiers.max_delay:g}s")
    if check_target:
        check_target_exists(producer, topic)
    msg_id = message_id or h.get(headers, h.MESSAGE_ID) or new_message_id()
    stamped = h.replace(
        headers,
        {
            h.MESSAGE_ID: msg_id,
            h.DELAY_TARGET: topic,
            h.DELAY_DUE_MS: str(due),
            h.DELAY_SENT_MS: str(now),
        },
    )
    dest = topic if remaining <= 0 else tiers.topic_for(remaining)
    kwargs: dict[str, Any] = {"headers": stamped}
    if key is not None:
        kwargs["key"] = key
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    produce_with_room(producer, dest, value, **kwargs)
    return msg_id


def cancel_delayed(
    producer: Producer,
    message_id: str,
    *,
    cancel_topic: str = CANCEL_TOPIC,
    on_delivery: Callable[[Any, Any], None] | None = None,
) -> None:
    """Cancel a pending delayed record by message id (enqueue only; flush to be sure).

    A cancel acknowledged before the record's due time always wins: forwarders catch up
    with the cancel topic before delivering anything. Cancelling an unknown or delivered id
    is harmless.
    """
    if not message_id:
        raise ValueError("message id must not be empty")
    value = json.dumps({"cancelled_ms": _now_ms()}).encode()
    kwargs: dict[str, Any] = {"key": message_id.encode()}
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    produce_with_room(producer, cancel_topic, value, **kwargs)


def _tier_topic_config(tier_seconds: float, max_delay: float) -> dict[str, str]:
    # Keep tier records well past any delay so a forwarder that is down for a while
    # loses nothing: at least a week, and twice the longest delay.
    retention = max(7 * 86400.0, 2 * max_delay, 4 * tier_seconds)
    return {"cleanup.policy": "delete", "retention.ms": str(int(retention * 1000))}


def ensure_tier_topics(
    admin_or_bootstrap: AdminSession | AdminClient | ClientSettings | str,
    tiers: DelayTiers,
    partitions: int = 1,
    *,
    cancel_topic: str | None = CANCEL_TOPIC,
    stats_topic: str | None = STATS_TOPIC,
    dlq_topic: str | None = None,
) -> None:
    """Create every tier topic, plus the compacted cancel and stats topics and the delay
    dead-letter topic (when named), when missing.

    Existing topics are left as they are. Pass ``cancel_topic=None``/``stats_topic=None`` to
    skip those.
    """
    wanted = [
        NewTopic(t, num_partitions=partitions, config=_tier_topic_config(s, tiers.max_delay))
        for s, t in zip(tiers.seconds, tiers.topics(), strict=True)
    ]
    compacted = {"cleanup.policy": "compact"}
    if cancel_topic:
        wanted.append(NewTopic(cancel_topic, num_partitions=1, config=compacted))
    if stats_topic:
        wanted.append(NewTopic(stats_topic, num_partitions=1, config=compacted))
    if dlq_topic:
        # Dead letters wait for an operator: keep them as long as tier records.
        wanted.append(
            NewTopic(dlq_topic, num_partitions=1, config=_tier_topic_config(0, tiers.max_delay))
        )
    if isinstance(admin_or_bootstrap, AdminClient):
        _create_missing_raw(admin_or_bootstrap, wanted)
        return
    if isinstance(admin_or_bootstrap, AdminSession):
        session = admin_or_bootstrap
    else:
        session = AdminSession(admin_or_bootstrap)
    session.ensure_topics(wanted)


def _create_missing_raw(client: AdminClient, wanted: list[NewTopic], timeout: float = 10.0) -> None:
    existing = set(client.list_topics(timeout=timeout).topics)
    missing = [n for n in wanted if n.topic not in existing]
    if not missing:
        return
    for name, fut in client.create_topics(missing, operation_timeout=timeout).items():
        try:
            fut.result(timeout)
        except Exception as exc:
            err = translate_error(exc, "create topic", name)
            if not isinstance(err, TopicAlreadyExists):
                raise err from exc
