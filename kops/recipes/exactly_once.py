"""Exactly-once consume-transform-produce for the recipes (KIP-98, KIP-447).

Every forwarding recipe (delay tiers, retry router, DLQ replay, fan-out, window replay) is
at-least-once by default: it produces, waits for the acks, then commits, so a crash between
the two sends a record again (with the same message id). With ``exactly_once`` it reads
with ``isolation.level=read_committed`` and puts what one round produces and the consumer
offsets that round advances into one transaction:

    sender = TransactionalSender(producer, consumer, what="tier 5s")
    sender.begin()
    producer.produce(...)                 # the round's records
    if sender.commit(offsets):            # offsets sent to the transaction, then commit
        ...                               # visible to read_committed readers, once
    else:
        ...                               # aborted: nothing of it is visible; do it again

The transactional id names one producer of one consumer (KIP-447: the broker fences a
zombie by the consumer's group generation, so the id need not follow partitions). Give it
a stable part (a recipe's ``instance_id``) and a restarted process fences its predecessor
and aborts its open transaction at once; without one, an open transaction of a killed
process holds back read_committed readers of its outputs until ``transaction.timeout.ms``
(10 s here, as Kafka Streams chooses for exactly-once).

A cluster that refuses transactions makes :func:`transactional_producer` raise
:class:`TransactionsUnsupported`: a recipe asked for exactly-once stops and says so; it
never falls back to at-least-once silently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import tenacity
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from kops.client import ClientSettings, ErrorWatch, KopsClientError, translate_error
from kops.errors import Unsupported

__all__ = [
    "DEFAULT_TRANSACTION_TIMEOUT_MS",
    "MAX_ABORTS",
    "AbortBackoff",
    "ProducerFenced",
    "TransactionalSender",
    "TransactionsUnsupported",
    "fenced",
    "read_committed",
    "transactional_id",
    "transactional_producer",
]

log = logging.getLogger("kops.exactly_once")

#: ``transaction.timeout.ms`` of the recipes' producers: a round's transaction lasts
#: milliseconds, and this bounds how long a killed process's open one holds readers back.
DEFAULT_TRANSACTION_TIMEOUT_MS = 10_000

#: Aborted transactions in a row after which a recipe stops redoing its batch (a record
#: its destination refuses for good would otherwise be tried forever).
MAX_ABORTS = 8

T = TypeVar("T")

# What a cluster answers InitProducerId with when it does not do transactions (or not for
# us): no fallback, the recipe stops.
_UNSUPPORTED_CODES = frozenset(
    {
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.UNSUPPORTED_VERSION,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        KafkaError._UNSUPPORTED_FEATURE,
        KafkaError.INVALID_TRANSACTION_TIMEOUT,
    }
)


class TransactionsUnsupported(KopsClientError, Unsupported):
    """The cluster refused a transactional producer: exactly-once cannot run there."""


class ProducerFenced(KopsClientError):
    """Another producer took this transactional id (a newer process with the same instance
    id), or the producer hit a fatal error: this one must stop."""


def transactional_id(*parts: object) -> str:
    """``kops.<part>.<part>...``: one id per producer, stable when its parts are."""
    return ".".join(["kops", *(str(p) for p in parts if p not in (None, ""))])


def read_committed(config: dict[str, Any]) -> dict[str, Any]:
    """A consumer config that never sees aborted or still-open transactional records."""
    return {**config, "isolation.level": "read_committed"}


def transactional_producer(
    settings: ClientSettings,
    txn_id: str,
    *,
    watch: ErrorWatch | None = None,
    timeout_ms: int = DEFAULT_TRANSACTION_TIMEOUT_MS,
    **extra: Any,
) -> Producer:
    """A producer with ``transactional.id`` set and ``init_transactions()`` done: any
    older producer of the id is fenced and its open transaction aborted.

    Raises :class:`TransactionsUnsupported` when the cluster refuses transactions, a
    retriable :class:`KopsClientError` when it did not answer in time."""
    producer = Producer(
        settings.producer_config(
            watch,
            **{
                "transactional.id": txn_id,
                "transaction.timeout.ms": timeout_ms,
                # librdkafka refuses a delivery timeout longer than the transaction's.
                "delivery.timeout.ms": min(
                    int(extra.pop("delivery.timeout.ms", timeout_ms)), timeout_ms
                ),
                # librdkafka 2.16 re-bootstraps once every broker is down; the group
                # coordinator it cached before stays a decommissioned handle, and
                # send_offsets_to_transaction then waits for it forever (seen after a
                # broker restart). Without re-bootstrap it reconnects to the same broker.
                "metadata.recovery.strategy": "none",
                **extra,
            },
        )
    )
    try:
        # A fenced predecessor's transaction is aborted first: allow for the broker's
        # marker writes on top of the usual round trip.
        producer.init_transactions(max(settings.timeout, 30.0))
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and err.code() in _UNSUPPORTED_CODES:
            raise TransactionsUnsupported(
                f"{settings.bootstrap} refused a transactional producer ({err.name()}: "
                f"{err.str()}); exactly_once needs brokers that serve transactions",
                code=err.name(),
            ) from None
        raise translate_error(exc, f"start transactional producer {txn_id}") from exc
    return producer


def _kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def fenced(error: BaseException | KafkaError, what: str) -> ProducerFenced | None:
    """``error`` (from ``produce()``, a transaction call or a delivery report) as
    :class:`ProducerFenced` when it is fatal for the producer; None for any other error."""
    err = error if isinstance(error, KafkaError) else _kafka_error(error)
    if err is None or not err.fatal():
        return None
    return ProducerFenced(f"{what}: {err.name()}: {err.str()}")


def _retriable(exc: BaseException) -> bool:
    err = _kafka_error(exc)
    return err is not None and err.retriable() and not err.fatal() and not err.txn_requires_abort()


class TransactionalSender:
    """Transactions of one consumer's rounds on one transactional producer.

    ``commit`` and ``abort`` retry what librdkafka calls retriable (a timeout, the broker
    away) until ``stop`` is set; an abortable error aborts and ``commit`` returns False; a
    fatal one (fenced) raises :class:`ProducerFenced`. ``consumer`` may be None for a
    producer whose transactions carry no consumer offsets (``commit([])``).
    """

    def __init__(
        self,
        producer: Producer,
        consumer: Consumer | None,
        *,
        what: str,
        stop: threading.Event | None = None,
        timeout: float = 30.0,
    ):
        self.producer = producer
        self.consumer = consumer
        self.what = what
        self.stop = stop or threading.Event()
        self.timeout = timeout
        self.open = False
        self.committed = 0
        self.aborted = 0

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        def log_retry(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            log.warning("%s: %s: %s; trying again", self.what, action, exc)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_retriable),
            stop=tenacity.stop_when_event_set(self.stop),
            wait=tenacity.wait_exponential(multiplier=0.1, max=2),
            sleep=self.stop.wait,
            before_sleep=log_retry,
            reraise=True,
        )
        return retrying(fn)

    def begin(self) -> None:
        try:
            self._call("begin", self.producer.begin_transaction)
        except KafkaException as exc:
            raise (fenced(exc, self.what) or exc) from None
        self.open = True

    def commit(self, offsets: Sequence[TopicPartition]) -> bool:
        """Add ``offsets`` (the consumer's next positions) to the open transaction and
        commit it. True: committed. False: aborted, nothing of it is visible."""
        try:
            if offsets:
                assert self.consumer is not None, "offsets need the consumer they are of"
                metadata = self.consumer.consumer_group_metadata()
                self._call(
                    "send offsets",
                    lambda: self.producer.send_offsets_to_transaction(
                        list(offsets), metadata, self.timeout
                    ),
                )
            self._call("commit", lambda: self.producer.commit_transaction(self.timeout))
        except KafkaException as exc:
            if (gone := fenced(exc, self.what)) is not None:
                self.open = False
                raise gone from None
            log.warning("%s: transaction aborted: %s", self.what, exc)
            self.abort()
            return False
        self.open = False
        self.committed += 1
        return True

    def abort(self) -> None:
        """Abort the open transaction (nothing of it becomes visible). Fenced: raises."""
        if not self.open:
            return
        try:
            self._call("abort", lambda: self.producer.abort_transaction(self.timeout))
        except KafkaException as exc:
            if (gone := fenced(exc, self.what)) is not None:
                self.open = False
                raise gone from None
            if not self.stop.is_set():
                raise
            # Stopping with the broker away: the coordinator aborts it when its timeout
            # passes, or at once when a producer with the same id starts.
            log.warning("%s: abort on stop: %s", self.what, exc)
        self.open = False
        self.aborted += 1

    def close(self) -> None:
        """Abort what is still open (on stop or after an error), flush nothing more."""
        try:
            self.abort()
        except ProducerFenced as exc:  # its message names what already
            log.warning("%s", exc)
        except (KopsClientError, KafkaException) as exc:
            log.warning("%s: %s", self.what, exc)


class AbortBackoff:
    """Aborted transactions of the same work in a row: a growing wait before each attempt
    again, and an error once ``limit`` of them aborted (a worker restarts the job later)."""

    def __init__(self, what: str, stop: threading.Event, limit: int = MAX_ABORTS):
        self.what = what
        self.stop = stop
        self.limit = limit
        self.aborts = 0

    def committed(self) -> None:
        self.aborts = 0

    def aborted(self, problem: str, again: str) -> None:
        """Wait before doing ``again`` (what the log says is redone); raises
        :class:`KopsClientError` at the ``limit``-th abort in a row."""
        self.aborts += 1
        if self.aborts >= self.limit:
            raise KopsClientError(
                f"{self.what}: {self.aborts} transactions in a row aborted; last: {problem}"
            )
        backoff = min(0.2 * 2 ** (self.aborts - 1), 5.0)
        log.warning("%s: %s aborted (%s); again in %.1fs", self.what, again, problem, backoff)
        self.stop.wait(backoff)
