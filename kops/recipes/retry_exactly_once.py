"""The retry router with ``exactly_once``: :func:`kops.recipes.retry.run_retrying_consumer`
on a transactional producer (:mod:`kops.recipes.exactly_once`).

The source and retry topics are read with ``isolation.level=read_committed``. Each batch
is one transaction: the retries (to the delay tiers) and dead letters its records caused,
and the consumer offsets past the batch (``send_offsets_to_transaction``). There is no
plain ``commit()``. A read_committed reader of the tier, retry or DLQ topics sees each
record's retry and dead letter once, whenever the process is killed.

A transaction that aborts (a retry or dead letter not acknowledged, a commit refused)
leaves nothing visible: the consumer seeks back to the batch's first offsets and the batch
is handled again. So the *handler* runs again for those records, as it does after a crash:
what is written to Kafka is exactly-once, the handler's own side effects stay
at-least-once. ``on_outcome`` is told of a record only once its batch is committed.

Transactional id: ``kops.retry.<group>.<topics>.<instance>``, one producer per consumer.
With ``instance_id`` it is stable, and a restarted process fences its predecessor and
aborts what it left open at once; without one the instance is host-pid (and a counter), so
a killed process's open transaction holds read_committed readers back until it times out
(``transaction.timeout.ms``, 10 s).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from kops.client import ClientSettings, ErrorWatch, KopsClientError, fetch_metadata, translate_error
from kops.recipes.delay import DelayTiers
from kops.recipes.delay.forwarder import default_instance
from kops.recipes.exactly_once import (
    AbortBackoff,
    TransactionalSender,
    fenced,
    read_committed,
    transactional_id,
    transactional_producer,
)
from kops.recipes.retry import Handler, Outcome, RetryingHandler, RetryPolicy, RetryStats
from kops.recipes.retry_loop import ConsumerLoop

__all__ = ["retry_transactional_id", "run_in_transactions"]

log = logging.getLogger("kops.retry")

_instances = itertools.count()


def retry_transactional_id(group: str, topics: Sequence[str], instance_id: str | None) -> str:
    """The transactional id of one retrying consumer. Without ``instance_id``, a process's
    consumers of the same group and topics still get ids of their own (the counter): one
    would fence the other."""
    instance = instance_id or f"{default_instance()}-{next(_instances)}"
    return transactional_id("retry", group, ",".join(topics), instance)


def run_in_transactions(
    settings: ClientSettings,
    consumer_config: Mapping[str, Any],
    subscribed: Sequence[str],
    handler: Handler | RetryingHandler,
    loop: ConsumerLoop,
    *,
    watch: ErrorWatch,
    group: str,
    policy: RetryPolicy,
    tiers: DelayTiers | None,
    instance_id: str | None,
) -> RetryStats:
    """The exactly-once loop of :func:`~kops.recipes.retry.run_retrying_consumer` (which
    creates the topics and builds the consumer config). A :class:`RetryingHandler` given
    sends on this loop's transactional producer while it runs."""
    txn_id = retry_transactional_id(group, subscribed, instance_id)
    # Before the consumer joins: a cluster refusing transactions stops us here, and a
    # predecessor's open transaction (same id) is aborted before we read its outputs.
    producer = transactional_producer(settings, txn_id, watch=watch, **{"linger.ms": 5})
    if isinstance(handler, RetryingHandler):
        wrapped, own_producer = handler, handler.producer
        wrapped.producer = producer
    else:
        wrapped = RetryingHandler(handler, producer, group=group, policy=policy, tiers=tiers)
        own_producer = producer
    consumer = Consumer(read_committed(dict(consumer_config)))
    stop = loop.stop or threading.Event()
    sender = TransactionalSender(producer, consumer, what=f"retry router {txn_id}", stop=stop)
    batches = _Batches(consumer, wrapped, sender, loop)
    try:
        fetch_metadata(consumer, watch, settings.timeout)
        consumer.subscribe(list(subscribed))
        for batch in loop.batches(consumer):
            batches.handle(list(loop.records(batch)))
    finally:
        try:
            sender.close()
        finally:
            wrapped.producer = own_producer
            consumer.close()
    return wrapped.stats


class _Batches:
    """Handles each batch in a transaction; an aborted one is rewound and done again."""

    def __init__(
        self,
        consumer: Consumer,
        wrapped: RetryingHandler,
        sender: TransactionalSender,
        loop: ConsumerLoop,
    ):
        self.consumer = consumer
        self.wrapped = wrapped
        self.sender = sender
        self.loop = loop
        self.backoff = AbortBackoff(sender.what, sender.stop)

    def handle(self, msgs: list[Message]) -> None:
        if not msgs:
            return
        before = copy.deepcopy(self.wrapped.stats)
        outcomes: list[Outcome] = []
        self.sender.begin()
        try:
            outcomes = [self.wrapped(m) for m in msgs]
            self.wrapped.flush()
            problem = None
        except KafkaException as exc:  # a produce refused: the transaction must abort
            if (gone := fenced(exc, self.sender.what)) is not None:
                raise gone from None
            problem = str(exc)
        except KopsClientError as exc:  # a retry or dead letter not acknowledged
            problem = str(exc)
        if problem is None and self.sender.commit(_offsets_after(msgs)):
            self.backoff.committed()
            self.loop.processed += len(msgs)
            if self.loop.on_outcome is not None:
                for msg, outcome in zip(msgs, outcomes, strict=True):
                    self.loop.on_outcome(msg, outcome)
            return
        if problem is not None:
            self.sender.abort()
        self._again(msgs, before, problem or "commit aborted")

    def _again(self, msgs: list[Message], before: RetryStats, problem: str) -> None:
        """Nothing of the batch is visible: count it as not handled and read it again."""
        with contextlib.suppress(KopsClientError):
            # Serves the purged records' delivery reports, so their errors do not count
            # against the next attempt.
            self.wrapped.flush(5)
        calls = self.wrapped.stats.handler_calls
        for f in dataclasses.fields(RetryStats):
            setattr(self.wrapped.stats, f.name, getattr(before, f.name))
        self.wrapped.stats.handler_calls = calls  # those calls did happen
        _rewind(self.consumer, msgs)
        self.backoff.aborted(problem, f"batch of {len(msgs)} records")


def _offsets_after(msgs: list[Message]) -> list[TopicPartition]:
    after: dict[tuple[str, int], int] = {}
    for m in msgs:
        after[(m.topic(), m.partition())] = m.offset() + 1
    return [TopicPartition(t, p, o) for (t, p), o in after.items()]


def _rewind(consumer: Consumer, msgs: list[Message]) -> None:
    """Seek each partition of the batch back to its first record of the batch."""
    first: dict[tuple[str, int], int] = {}
    for m in msgs:
        first.setdefault((m.topic(), m.partition()), m.offset())
    held = {(tp.topic, tp.partition) for tp in consumer.assignment()}
    for (topic, partition), offset in first.items():
        try:
            consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:
            if (topic, partition) in held:
                # Going on would skip the batch's records: they would be lost.
                raise translate_error(exc, "rewind after an aborted transaction", topic) from exc
            # Revoked: its next owner starts at the committed offset, before the batch.
            log.debug("rewind %s-%d: %s", topic, partition, exc)
