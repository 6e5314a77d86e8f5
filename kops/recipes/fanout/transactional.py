"""Exactly-once fan-out: each round of :class:`~kops.recipes.fanout.forward.BacklogFanout`
(what it forwarded since the last commit, and the source offsets that advances) is one
transaction (:mod:`kops.recipes.exactly_once`).

The fan-out reads the source with one consumer, so it has one transactional producer, with
the id ``kops.fanout.<group>.<source>``: stable across restarts, so a restarted fan-out
fences the one it replaces and aborts the transaction that one left open at once (a
killed fan-out holds back no read_committed reader of the target). It also means two
fan-outs of one group cannot both run: the newer fences the older, which stops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from kops.client import ClientSettings, ErrorWatch, translate_error
from kops.recipes.exactly_once import (
    ProducerFenced,
    TransactionalSender,
    fenced,
    transactional_id,
    transactional_producer,
)

__all__ = ["FanoutTransactions"]

log = logging.getLogger(__name__)


class FanoutTransactions:
    """One fan-out's transactional producer and the state of its open round."""

    def __init__(
        self,
        settings: ClientSettings,
        group: str,
        source: str,
        consumer: Consumer,
        *,
        watch: ErrorWatch,
        stop: threading.Event,
        **producer_config: Any,
    ) -> None:
        self.group = group
        self.txn_id = transactional_id("fanout", group, source)
        # Started before the consumer reads the group's offsets: the predecessor's open
        # transaction (its offsets still pending) is aborted by then.
        self.producer = transactional_producer(
            settings, self.txn_id, watch=watch, **producer_config
        )
        self.sender = TransactionalSender(
            self.producer, consumer, what=f"fan-out of {source} (group {group})", stop=stop
        )
        #: Deliveries acknowledged in the open round; they count once it commits.
        self.acked = 0

    def ensure_open(self) -> None:
        """Before producing: the round's transaction is open."""
        if not self.sender.open:
            self.sender.begin()

    def commit(self, offsets: Sequence[TopicPartition]) -> int | None:
        """Commit the round with ``offsets`` (metadata kept). Returns how many forwarded
        records it made visible, None when it aborted (nothing of it is visible)."""
        acked, self.acked = self.acked, 0
        if not offsets and not self.sender.open:
            return 0
        self.ensure_open()  # offsets alone (past aborted source records) need one too
        try:
            return acked if self.sender.commit(offsets) else None
        except ProducerFenced as exc:
            raise self._fenced(str(exc)) from None

    def fenced(self, exc: KafkaException | KafkaError) -> ProducerFenced | None:
        """A fatal producer error (from produce or a delivery) as :class:`ProducerFenced`;
        None for any other error."""
        gone = fenced(exc, self.sender.what)
        if gone is None:
            return None
        self.sender.open = False  # a fenced producer can abort nothing
        return self._fenced(str(gone))

    def _fenced(self, detail: str) -> ProducerFenced:
        return ProducerFenced(
            f"{detail}: another process took transactional id {self.txn_id} (a second "
            f"fan-out of group {self.group}?); this one stops"
        )

    def rewind(self, consumer: Consumer, positions: Mapping[tuple[str, int], int]) -> None:
        """After an abort: read the round again from ``positions`` (the last commits)."""
        log.warning("%s: round aborted; forwarding it again", self.sender.what)
        for (topic, partition), offset in positions.items():
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                raise translate_error(exc, "seek", topic) from exc

    def close(self) -> None:
        """Abort what is still open: a stopped or failed round leaves nothing visible."""
        self.sender.close()
