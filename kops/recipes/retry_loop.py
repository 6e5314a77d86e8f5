"""The poll loop of :func:`kops.recipes.retry.run_retrying_consumer`, shared by its
at-least-once and exactly-once batch handling."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from kops.client import IdleClock, translate_error

if TYPE_CHECKING:
    from kops.recipes.retry import Outcome

__all__ = ["ConsumerLoop"]

log = logging.getLogger("kops.retry")

_MISSING_TOPIC_CODES = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC})


@dataclass
class ConsumerLoop:
    """How long a retrying consumer runs, and whom it tells of each record's outcome."""

    stop: threading.Event | None = None
    max_records: int | None = None
    idle_timeout: float | None = None
    batch_size: int = 100
    on_outcome: Callable[[Message, Outcome], None] | None = None
    processed: int = 0
    _missing: set[str | None] = field(default_factory=set)

    def batches(self, consumer: Consumer) -> Iterator[list[Message]]:
        """``consume()`` batches until stopped, ``max_records`` or ``idle_timeout``."""
        idle = IdleClock(self.idle_timeout)
        while not (self.stop is not None and self.stop.is_set()):
            if self.max_records is not None and self.processed >= self.max_records:
                break
            if idle.expired(consumer):
                break
            want = self.batch_size
            if self.max_records is not None:
                want = min(want, self.max_records - self.processed)
            batch = consumer.consume(want, timeout=0.2)
            yield batch
            if batch:
                idle.touch()

    def records(self, batch: list[Message]) -> Iterator[Message]:
        """The batch's records; raises at the first error that is not passing. Lazy: the
        records before that error are handled (and committed) first."""
        for msg in batch:
            err = msg.error()
            if err is None:
                yield msg
            elif err.code() == KafkaError._PARTITION_EOF or err.retriable():
                continue
            elif err.code() in _MISSING_TOPIC_CODES:
                # A long-running consumer outlives a missing topic: librdkafka picks the
                # topic up once it is created.
                if msg.topic() not in self._missing:
                    log.warning(
                        "topic %s does not exist (yet): waiting for it; create it with "
                        "`kops topic create %s`", msg.topic(), msg.topic(),
                    )  # fmt: skip
                    self._missing.add(msg.topic())
            else:
                raise translate_error(KafkaException(err), "consume", msg.topic())
