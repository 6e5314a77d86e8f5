"""What the tier forwarders need around producing: acks per round, which delivery errors
are final, whether a target topic exists, and the dead letter of a record that cannot be
delivered.

A record whose target is missing (or refuses it for good: too large, not authorised) must
not stop its tier: it goes to the delay dead-letter topic (``kops.delay.dlq`` by default)
with the error in the ``kops.dlq.*`` headers of :mod:`kops.recipes.dlq`, and the records
behind it keep flowing. Transient errors (broker away, leader moving) are retried instead.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from kops.client import ErrorWatch, KopsClientError, UnknownTopic, fetch_metadata, translate_error
from kops.recipes import headers as h
from kops.recipes.dlq.records import dead_letter_headers

__all__ = ["PERMANENT_ERRORS", "Round", "TargetCache", "delay_dead_letter_headers", "is_permanent"]

#: Delivery errors retrying cannot fix: the record goes to the dead-letter topic.
PERMANENT_ERRORS = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_EXCEPTION,
    }
)


def is_permanent(err: KafkaError) -> bool:
    return err.code() in PERMANENT_ERRORS


class Round:
    """Acks of one produce round; callbacks may run on any thread polling the producer."""

    def __init__(self, n: int):
        self.total = n
        self.left = n
        self.errors: dict[int, KafkaError] = {}  # index in the round -> error
        self.acked: set[int] = set()  # indexes with a delivery report (success or error)
        self.done = threading.Event()
        self._lock = threading.Lock()
        if n == 0:
            self.done.set()

    def callback(self, index: int) -> Any:
        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            with self._lock:
                if err is not None:
                    self.errors[index] = err
                self.acked.add(index)
                self.left -= 1
                if self.left <= 0:
                    self.done.set()

        return on_delivery


class TargetCache:
    """Whether target topics exist, asked of the cluster and remembered for a while.

    A topic seen is trusted for ``known_for`` seconds; a missing one is asked again after
    ``missing_for`` seconds (it may be created any time). Shared by every tier's thread.
    """

    def __init__(
        self,
        producer: Producer,
        *,
        known_for: float = 60.0,
        missing_for: float = 1.0,
        timeout: float = 5.0,
    ):
        self.producer = producer
        self.known_for = known_for
        self.missing_for = missing_for
        self.timeout = timeout
        self._seen: dict[str, tuple[bool, float]] = {}
        self._lock = threading.Lock()

    def exists(self, topic: str) -> bool | None:
        """True/False, or None when the cluster could not say (then just try producing)."""
        now = time.monotonic()
        with self._lock:
            known = self._seen.get(topic)
        if known is not None and known[1] > now:
            return known[0]
        try:
            fetch_metadata(self.producer, ErrorWatch("the cluster"), self.timeout, topic)
            found = True
        except UnknownTopic:
            found = False
        except (KopsClientError, KafkaException):
            return None
        with self._lock:
            self._seen[topic] = (found, now + (self.known_for if found else self.missing_for))
        return found

    def forget(self, topic: str) -> None:
        with self._lock:
            self._seen.pop(topic, None)


def unknown_topic_error(topic: str) -> Exception:
    return UnknownTopic(f"unknown topic {topic!r}", code="UNKNOWN_TOPIC_OR_PART")


def delivery_exception(err: KafkaError, topic: str) -> Exception:
    """A delivery error as the kops exception the dead-letter headers name."""
    return translate_error(KafkaException(err), "deliver", topic)


def delay_dead_letter_headers(
    msg: Message,
    exc: BaseException,
    *,
    target: str,
    group: str,
    first_failure_ms: int,
) -> list[tuple[str, bytes | None]]:
    """Headers of a delay dead letter.

    The ``kops.dlq.*`` conventions of :mod:`kops.recipes.dlq`, with the *target* as the
    original topic, so ``kops dlq replay kops.delay.dlq`` sends it where it was meant to go
    (by key: the tier's partition means nothing there). The tier record it was read from is
    in ``kops.delay.from`` (``topic/partition/offset``); the message id and the delay
    headers are kept, so a consumer still drops duplicates and measures lateness.
    """
    ts_type, ts = msg.timestamp()
    hdrs = msg.headers() or []
    base = dead_letter_headers(
        hdrs,
        exc,
        topic=target,
        partition=msg.partition(),
        offset=msg.offset(),
        timestamp_ms=ts if ts_type and ts >= 0 else None,
        group=group,
        attempts=1,
        first_failure_ms=first_failure_ms,
        reason="non-retryable",
    )
    kept = {
        name: h.get(hdrs, name)
        for name in (h.MESSAGE_ID, h.DELAY_TARGET, h.DELAY_DUE_MS, h.DELAY_SENT_MS)
    }
    return h.replace(
        base,
        {
            h.DLQ_ORIGINAL_PARTITION: None,
            h.DLQ_ORIGINAL_OFFSET: None,
            h.DELAY_FROM: f"{msg.topic()}/{msg.partition()}/{msg.offset()}",
            **kept,
        },
    )
