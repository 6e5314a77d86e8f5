"""A transactional id's state and the coordinator's rules for changing it (sans-io).

Kafka's TransactionCoordinator in one place, as decisions on a
:class:`TxnMetadata`: each returns an error code, or the metadata to write to
`__transaction_state` before answering (the caller persists it, then performs
what the new state asks: markers for PrepareCommit/PrepareAbort). No clock of
its own and no I/O, so the rules are tested by driving them directly.

States and transitions (Kafka's TransactionState):

    Empty -> Ongoing                      AddPartitionsToTxn / AddOffsetsToTxn
    Ongoing -> PrepareCommit | PrepareAbort   EndTxn, or a timeout / a new InitProducerId (abort)
    Prepare* -> Complete*                 every partition has its marker
    Empty | Complete* -> Empty            InitProducerId (epoch bumped)

Error codes follow Kafka's, version-mapped by the handlers (PRODUCER_FENCED is
INVALID_PRODUCER_EPOCH before KIP-588's versions).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from kio.schema.errors import ErrorCode

__all__ = [
    "MAX_PRODUCER_EPOCH",
    "TxnDecision",
    "TxnMetadata",
    "TxnState",
    "abort_timed_out",
    "add_partitions",
    "end_transaction",
    "for_version",
    "init_producer_id",
    "markers_written",
]

TopicPartition = tuple[str, int]

# Kafka bumps to a new producer id rather than let the epoch reach Short.MAX_VALUE.
MAX_PRODUCER_EPOCH = 32766


class TxnState(enum.Enum):
    EMPTY = "Empty"
    ONGOING = "Ongoing"
    PREPARE_COMMIT = "PrepareCommit"
    PREPARE_ABORT = "PrepareAbort"
    COMPLETE_COMMIT = "CompleteCommit"
    COMPLETE_ABORT = "CompleteAbort"

    @property
    def preparing(self) -> bool:
        return self in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT)

    @property
    def complete(self) -> bool:
        return self in (TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT)


@dataclass(frozen=True, slots=True)
class TxnMetadata:
    transactional_id: str
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    state: TxnState = TxnState.EMPTY
    partitions: frozenset[TopicPartition] = field(default_factory=frozenset)
    # When the current transaction began (its first partition); -1 with none.
    start_ms: int = -1
    update_ms: int = -1

    def expired(self, now_ms: int) -> bool:
        return self.state is TxnState.ONGOING and now_ms - self.start_ms > self.timeout_ms


@dataclass(frozen=True, slots=True)
class TxnDecision:
    """`error`, or `metadata` to persist (None when nothing changes) and answer with."""

    error: ErrorCode = ErrorCode.none
    metadata: TxnMetadata | None = None


def _check_producer(meta: TxnMetadata | None, producer_id: int, epoch: int) -> ErrorCode:
    if meta is None or meta.producer_id != producer_id:
        return ErrorCode.invalid_producer_id_mapping
    if meta.producer_epoch != epoch:
        return ErrorCode.producer_fenced
    return ErrorCode.none


def _bumped(meta: TxnMetadata, allocate: Callable[[], int]) -> tuple[int, int]:
    if meta.producer_epoch >= MAX_PRODUCER_EPOCH:
        return allocate(), 0
    return meta.producer_id, meta.producer_epoch + 1


def init_producer_id(
    meta: TxnMetadata | None,
    transactional_id: str,
    timeout_ms: int,
    now_ms: int,
    allocate: Callable[[], int],
    *,
    max_timeout_ms: int,
    expected: tuple[int, int] = (-1, -1),
) -> TxnDecision:
    """InitProducerId with a transactional id: a new producer, or the id's next epoch.

    An ongoing transaction is aborted first (its producer fenced by the bumped
    epoch) and the caller answers CONCURRENT_TRANSACTIONS, so the client asks
    again once the abort's markers are written. `expected` is the (producer id,
    epoch) a v3+ client says it holds (KIP-360); a mismatch means it was fenced.
    """
    if not 0 < timeout_ms <= max_timeout_ms:
        return TxnDecision(ErrorCode.invalid_transaction_timeout)
    if meta is None:
        return TxnDecision(
            metadata=TxnMetadata(transactional_id, allocate(), 0, timeout_ms, update_ms=now_ms)
        )
    if expected != (-1, -1) and expected != (meta.producer_id, meta.producer_epoch):
        return TxnDecision(ErrorCode.producer_fenced)
    if meta.state.preparing:
        return TxnDecision(ErrorCode.concurrent_transactions)
    if meta.state is TxnState.ONGOING:
        return TxnDecision(ErrorCode.concurrent_transactions, _fenced_abort(meta, now_ms))
    producer_id, epoch = _bumped(meta, allocate)
    return TxnDecision(
        metadata=replace(
            meta,
            producer_id=producer_id,
            producer_epoch=epoch,
            timeout_ms=timeout_ms,
            state=TxnState.EMPTY,
            partitions=frozenset(),
            start_ms=-1,
            update_ms=now_ms,
        )
    )


def add_partitions(
    meta: TxnMetadata | None,
    producer_id: int,
    epoch: int,
    partitions: Iterable[TopicPartition],
    now_ms: int,
) -> TxnDecision:
    """AddPartitionsToTxn (and AddOffsetsToTxn's offsets partition): the transaction begins."""
    error = _check_producer(meta, producer_id, epoch)
    if error != ErrorCode.none or meta is None:
        return TxnDecision(error)
    if meta.state.preparing:
        return TxnDecision(ErrorCode.concurrent_transactions)
    wanted = frozenset(partitions)
    if meta.state is TxnState.ONGOING and wanted <= meta.partitions:
        return TxnDecision()
    if meta.state is TxnState.ONGOING:
        return TxnDecision(
            metadata=replace(meta, partitions=meta.partitions | wanted, update_ms=now_ms)
        )
    return TxnDecision(
        metadata=replace(
            meta,
            state=TxnState.ONGOING,
            partitions=wanted,
            start_ms=now_ms,
            update_ms=now_ms,
        )
    )


def end_transaction(
    meta: TxnMetadata | None, producer_id: int, epoch: int, commit: bool, now_ms: int
) -> TxnDecision:
    """EndTxn: prepare to commit or abort; a retry of a finished end succeeds again."""
    error = _check_producer(meta, producer_id, epoch)
    if error != ErrorCode.none or meta is None:
        return TxnDecision(error)
    done, preparing = (
        (TxnState.COMPLETE_COMMIT, TxnState.PREPARE_COMMIT)
        if commit
        else (TxnState.COMPLETE_ABORT, TxnState.PREPARE_ABORT)
    )
    if meta.state is done:
        return TxnDecision()
    if meta.state is preparing:
        return TxnDecision(ErrorCode.concurrent_transactions)
    if meta.state is not TxnState.ONGOING:
        return TxnDecision(ErrorCode.invalid_txn_state)
    return TxnDecision(metadata=replace(meta, state=preparing, update_ms=now_ms))


def _fenced_abort(meta: TxnMetadata, now_ms: int) -> TxnMetadata:
    # The same producer id, whatever the epoch: the markers must reach the batches that
    # id wrote. MAX_PRODUCER_EPOCH leaves room for this one bump; the next
    # InitProducerId then moves to a new id.
    return replace(
        meta, producer_epoch=meta.producer_epoch + 1, state=TxnState.PREPARE_ABORT, update_ms=now_ms
    )


def abort_timed_out(meta: TxnMetadata, now_ms: int) -> TxnMetadata | None:
    """An ongoing transaction past its timeout: abort it under a bumped epoch, so the
    producer that let it hang is fenced (Kafka's abortTimedOutTransactions)."""
    return _fenced_abort(meta, now_ms) if meta.expired(now_ms) else None


def markers_written(meta: TxnMetadata, now_ms: int) -> TxnMetadata:
    """Every partition of a preparing transaction has its marker: it is complete."""
    if not meta.state.preparing:
        raise ValueError(f"{meta.transactional_id} is {meta.state.value}, not preparing")
    state = (
        TxnState.COMPLETE_COMMIT
        if meta.state is TxnState.PREPARE_COMMIT
        else TxnState.COMPLETE_ABORT
    )
    return replace(meta, state=state, partitions=frozenset(), start_ms=-1, update_ms=now_ms)


def for_version(code: ErrorCode, version: int, fenced_since: int) -> ErrorCode:
    """PRODUCER_FENCED as a request's version knows it: KIP-588 added the code in
    version `fenced_since` of each API; older clients get INVALID_PRODUCER_EPOCH."""
    if code == ErrorCode.producer_fenced and version < fenced_since:
        return ErrorCode.invalid_producer_epoch
    return code
