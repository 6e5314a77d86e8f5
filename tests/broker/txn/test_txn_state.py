"""The transaction coordinator's rules (kops.broker.txn.state), driven directly."""

from __future__ import annotations

import itertools
import random

import pytest
from kio.schema.errors import ErrorCode

from kops.broker.txn.state import (
    MAX_PRODUCER_EPOCH,
    TxnMetadata,
    TxnState,
    abort_timed_out,
    add_partitions,
    end_transaction,
    for_version,
    init_producer_id,
    markers_written,
)

MAX_TIMEOUT = 900_000
S = TxnState


def fresh_ids() -> itertools.count[int]:
    return itertools.count(1000)


def init(
    meta: TxnMetadata | None, ids: itertools.count[int], now: int = 0, timeout: int = 60_000
) -> tuple[ErrorCode, TxnMetadata | None]:
    d = init_producer_id(meta, "t", timeout, now, lambda: next(ids), max_timeout_ms=MAX_TIMEOUT)
    return d.error, d.metadata


def test_a_new_id_gets_a_producer_and_each_init_bumps_the_epoch() -> None:
    ids = fresh_ids()
    error, meta = init(None, ids)
    assert error == ErrorCode.none and meta is not None
    assert (meta.producer_id, meta.producer_epoch, meta.state) == (1000, 0, S.EMPTY)
    error, again = init(meta, ids, now=5)
    assert error == ErrorCode.none and again is not None
    assert (again.producer_id, again.producer_epoch) == (1000, 1)


def test_timeouts_outside_the_range_are_refused() -> None:
    for timeout in (0, -1, MAX_TIMEOUT + 1):
        error, meta = init(None, fresh_ids(), timeout=timeout)
        assert error == ErrorCode.invalid_transaction_timeout and meta is None


def test_the_epoch_rolls_over_to_a_new_producer_id() -> None:
    ids = fresh_ids()
    meta = TxnMetadata("t", 7, MAX_PRODUCER_EPOCH, 60_000)
    error, bumped = init(meta, ids)
    assert error == ErrorCode.none and bumped is not None
    assert (bumped.producer_id, bumped.producer_epoch) == (1000, 0)


def test_a_transaction_runs_from_empty_to_complete() -> None:
    meta = TxnMetadata("t", 7, 3, 60_000)
    d = add_partitions(meta, 7, 3, [("a", 0), ("b", 1)], now_ms=10)
    assert d.error == ErrorCode.none and d.metadata is not None
    ongoing = d.metadata
    assert ongoing.state is S.ONGOING and ongoing.start_ms == 10
    assert ongoing.partitions == {("a", 0), ("b", 1)}
    # Adding what is already there writes nothing; adding more keeps the start time.
    assert add_partitions(ongoing, 7, 3, [("a", 0)], 11).metadata is None
    more = add_partitions(ongoing, 7, 3, [("c", 0)], 12).metadata
    assert more is not None and more.start_ms == 10 and len(more.partitions) == 3
    end = end_transaction(more, 7, 3, True, 20)
    assert end.error == ErrorCode.none and end.metadata is not None
    assert end.metadata.state is S.PREPARE_COMMIT
    done = markers_written(end.metadata, 21)
    assert done.state is S.COMPLETE_COMMIT and not done.partitions and done.start_ms == -1
    # A retried EndTxn of the same outcome succeeds and changes nothing; the other fails.
    assert end_transaction(done, 7, 3, True, 22) == end_transaction(done, 7, 3, True, 22)
    assert end_transaction(done, 7, 3, True, 22).metadata is None
    assert end_transaction(done, 7, 3, False, 22).error == ErrorCode.invalid_txn_state
    # The next transaction starts from the completed one.
    again = add_partitions(done, 7, 3, [("a", 0)], 30).metadata
    assert again is not None and again.state is S.ONGOING and again.partitions == {("a", 0)}


def test_requests_of_other_producers_are_refused() -> None:
    meta = TxnMetadata("t", 7, 3, 60_000, S.ONGOING, frozenset({("a", 0)}), 0, 0)
    assert add_partitions(None, 7, 3, [], 0).error == ErrorCode.invalid_producer_id_mapping
    assert add_partitions(meta, 8, 3, [], 0).error == ErrorCode.invalid_producer_id_mapping
    assert add_partitions(meta, 7, 2, [], 0).error == ErrorCode.producer_fenced
    assert end_transaction(meta, 7, 2, True, 0).error == ErrorCode.producer_fenced
    assert end_transaction(meta, 9, 3, True, 0).error == ErrorCode.invalid_producer_id_mapping


def test_while_markers_are_written_the_producer_waits() -> None:
    preparing = TxnMetadata("t", 7, 3, 60_000, S.PREPARE_ABORT, frozenset({("a", 0)}), 0, 0)
    assert add_partitions(preparing, 7, 3, [("b", 0)], 1).error == ErrorCode.concurrent_transactions
    assert end_transaction(preparing, 7, 3, False, 1).error == ErrorCode.concurrent_transactions
    assert end_transaction(preparing, 7, 3, True, 1).error == ErrorCode.invalid_txn_state
    error, meta = init(preparing, fresh_ids())
    assert error == ErrorCode.concurrent_transactions and meta is None


def test_a_new_init_aborts_the_open_transaction_under_a_bumped_epoch() -> None:
    ongoing = TxnMetadata("t", 7, 3, 60_000, S.ONGOING, frozenset({("a", 0)}), 0, 0)
    error, aborting = init(ongoing, fresh_ids(), now=5)
    assert error == ErrorCode.concurrent_transactions and aborting is not None
    assert aborting.state is S.PREPARE_ABORT and aborting.partitions == {("a", 0)}
    assert (aborting.producer_id, aborting.producer_epoch) == (7, 4)
    # The old producer is fenced from the moment the abort is decided.
    assert end_transaction(aborting, 7, 3, True, 6).error == ErrorCode.producer_fenced
    done = markers_written(aborting, 7)
    error, ready = init(done, fresh_ids(), now=8)
    assert error == ErrorCode.none and ready is not None and ready.producer_epoch == 5


def test_an_abort_at_the_last_epoch_keeps_the_producer_id_for_its_markers() -> None:
    ongoing = TxnMetadata("t", 7, MAX_PRODUCER_EPOCH, 10, S.ONGOING, frozenset({("a", 0)}), 0)
    fenced = abort_timed_out(ongoing, 11)
    assert fenced is not None and fenced.producer_id == 7
    assert fenced.producer_epoch == MAX_PRODUCER_EPOCH + 1 <= 32767


def test_only_ongoing_transactions_past_their_timeout_are_aborted() -> None:
    ongoing = TxnMetadata("t", 7, 3, 1000, S.ONGOING, frozenset({("a", 0)}), 100, 100)
    assert abort_timed_out(ongoing, 1100) is None
    fenced = abort_timed_out(ongoing, 1101)
    assert fenced is not None and fenced.state is S.PREPARE_ABORT and fenced.producer_epoch == 4
    for state in (S.EMPTY, S.PREPARE_COMMIT, S.COMPLETE_ABORT):
        assert abort_timed_out(TxnMetadata("t", 7, 3, 1000, state, start_ms=0), 10**9) is None


def test_empty_transactions_cannot_end_and_only_preparing_ones_complete() -> None:
    empty = TxnMetadata("t", 7, 3, 60_000)
    assert end_transaction(empty, 7, 3, True, 0).error == ErrorCode.invalid_txn_state
    with pytest.raises(ValueError):
        markers_written(empty, 0)


def test_producer_fenced_is_invalid_producer_epoch_for_older_versions() -> None:
    assert for_version(ErrorCode.producer_fenced, 1, 2) == ErrorCode.invalid_producer_epoch
    assert for_version(ErrorCode.producer_fenced, 2, 2) == ErrorCode.producer_fenced
    assert for_version(ErrorCode.none, 0, 2) == ErrorCode.none


def test_random_request_sequences_keep_the_invariants() -> None:
    """Seeded: whatever arrives, an epoch never goes back for the same producer id, a
    preparing transaction keeps its partitions, and an empty or complete one has none."""
    for seed in range(300):
        rng = random.Random(seed)
        ids = fresh_ids()
        meta: TxnMetadata | None = None
        now = 0
        for _ in range(40):
            now += rng.randint(0, 400)
            op = rng.choice(["init", "add", "end", "markers", "timeout"])
            pid = meta.producer_id if meta is not None else 1000
            epoch = (meta.producer_epoch if meta is not None else 0) - rng.choice([0, 0, 1])
            before = meta
            new: TxnMetadata | None = None
            if op == "init":
                new = init(meta, ids, now, timeout=1000)[1]
            elif op == "add":
                new = add_partitions(meta, pid, epoch, [("t", rng.randint(0, 3))], now).metadata
            elif op == "end" and meta is not None:
                new = end_transaction(meta, pid, epoch, rng.random() < 0.5, now).metadata
            elif op == "markers" and meta is not None and meta.state.preparing:
                new = markers_written(meta, now)
            elif op == "timeout" and meta is not None:
                new = abort_timed_out(meta, now)
            if new is None:
                continue
            if before is not None and new.producer_id == before.producer_id:
                assert new.producer_epoch >= before.producer_epoch, seed
            if new.state.preparing and before is not None and before.state is S.ONGOING:
                assert new.partitions == before.partitions, seed
            if new.state in (S.EMPTY, S.COMPLETE_COMMIT, S.COMPLETE_ABORT):
                assert not new.partitions and new.start_ms == -1, seed
            meta = new
