"""Transactions in a PartitionLog (KIP-98): markers, the last stable offset, txn indexes."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kops.broker.log import (
    InvalidProducerEpochError,
    InvalidRecordError,
    InvalidTxnStateError,
    LogConfig,
    PartitionLog,
)
from kops.broker.log.transactions import AbortedTxn, is_marker
from kops.protocol.batch import (
    ATTR_TRANSACTIONAL,
    CONTROL_ABORT,
    CONTROL_COMMIT,
    build_batch,
    build_marker,
    decode_records,
    iter_batches,
    marker_type,
    parse_header,
)

DIR = "t-0"


class Producer:
    """Keeps one producer's sequence numbers."""

    def __init__(self, pid: int, epoch: int = 0) -> None:
        self.pid, self.epoch, self.seq = pid, epoch, 0

    def batch(self, n: int = 2, *, txn: bool = True, key: bytes = b"k") -> bytes:
        data = build_batch(
            [(key + b"%d" % i, b"v%d-%d" % (self.seq, i), []) for i in range(n)],
            timestamp_ms=1_000 + self.seq,
            producer_id=self.pid,
            producer_epoch=self.epoch,
            base_sequence=self.seq,
            attributes=ATTR_TRANSACTIONAL if txn else 0,
        )
        self.seq += n
        return data

    def bump(self, epoch: int) -> None:
        self.epoch, self.seq = epoch, 0


def open_log(
    tmp_path: Path, *, recover: bool = False, recovery_point: int = 0, **cfg: object
) -> PartitionLog:
    cfg.setdefault("segment_bytes", 400)
    cfg.setdefault("index_interval_bytes", 0)
    config = LogConfig(**cfg)  # type: ignore[arg-type]
    return PartitionLog(tmp_path / DIR, config, recover=recover, recovery_point=recovery_point)


def plain() -> bytes:
    return build_batch([(b"p", b"plain", [])], timestamp_ms=1_000)


def marker(log: PartitionLog, pid: int, commit: bool, epoch: int = 0) -> int:
    return log.append_marker(pid, epoch, commit, 5, 0, now_ms=2_000)


def settle(log: PartitionLog) -> None:
    log.high_watermark = log.log_end_offset


def everything(log: PartitionLog) -> list[tuple[int, int]]:
    return log.aborted_transactions(0, log.log_end_offset + 1)


def txnindex_files(tmp_path: Path) -> dict[int, bytes]:
    return {int(p.name[:20]): p.read_bytes() for p in sorted((tmp_path / DIR).glob("*.txnindex"))}


# --- markers --------------------------------------------------------------------------------


def test_marker_batch_round_trip() -> None:
    raw = build_marker(7, 3, False, 11, base_offset=42, leader_epoch=4, timestamp_ms=99)
    header = parse_header(raw)
    assert is_marker(header)
    assert (header.base_offset, header.partition_leader_epoch) == (42, 4)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (7, 3, -1)
    assert (header.records_count, header.last_offset_delta, header.attributes) == (1, 0, 0x30)
    assert marker_type(raw) == CONTROL_ABORT
    assert marker_type(build_marker(7, 3, True, 11)) == CONTROL_COMMIT
    # The control record: key (version 0, type), value (version 0, coordinator epoch).
    [record] = decode_records(raw)
    assert record.key == struct.pack(">hh", 0, CONTROL_ABORT)
    assert record.value == struct.pack(">hi", 0, 11)
    assert not is_marker(parse_header(build_batch([(None, b"x", [])], attributes=0x20)))


def test_clients_may_not_write_control_batches(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    with pytest.raises(InvalidRecordError):
        log.append(build_marker(1, 0, True, 0), 0)
    assert log.log_end_offset == 0


# --- the last stable offset -----------------------------------------------------------------


def test_ongoing_transaction_holds_the_last_stable_offset(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    p = Producer(1)
    log.append(plain(), 0)  # 0
    log.append(p.batch(), 0)  # 1-2
    log.append(plain(), 0)  # 3
    settle(log)
    assert (log.high_watermark, log.last_stable_offset) == (4, 1)
    assert log.ongoing_transactions == {1: 1}
    log.append(p.batch(), 0)  # 4-5: the same transaction
    settle(log)
    assert log.last_stable_offset == 1
    offset = marker(log, 1, commit=True)
    assert offset == 6 and log.log_end_offset == 7
    # The marker is not below the high watermark yet: still unstable.
    log.high_watermark = 6
    assert log.last_stable_offset == 1
    settle(log)
    assert log.last_stable_offset == 7
    assert log.ongoing_transactions == {}
    assert everything(log) == []  # a commit indexes nothing
    # A read up to the LSO stops before the transaction while it is on.
    log.append(p.batch(), 0)  # 7-8
    settle(log)
    assert log.last_stable_offset == 7
    data = log.read(0, 1 << 20, log.last_stable_offset)
    assert [h.base_offset for _, h in iter_batches(data)] == [0, 1, 3, 4, 6]


def test_abort_is_indexed_in_the_marker_segment(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    p = Producer(9)
    log.append(p.batch(), 0)  # 0-1
    log.roll()
    log.append(p.batch(), 0)  # 2-3
    offset = marker(log, 9, commit=False)  # 4, in the segment at 2
    settle(log)
    assert log.last_stable_offset == 5
    assert everything(log) == [(9, 0)]
    files = txnindex_files(tmp_path)
    assert list(files) == [2]
    assert files[2] == struct.pack(">hqqqq", 0, 9, 0, offset, offset + 1)  # Kafka's 34 bytes
    assert log._segments[1].txn_index.entries == [AbortedTxn(9, 0, 4, 5)]


def test_interleaved_producers(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=1 << 20)
    a, b, c = Producer(1), Producer(2), Producer(3)
    log.append(a.batch(), 0)  # 0-1  a
    log.append(b.batch(), 0)  # 2-3  b
    log.append(a.batch(), 0)  # 4-5  a
    settle(log)
    assert log.last_stable_offset == 0
    assert marker(log, 1, commit=False) == 6  # a aborted; b (from 2) still on
    settle(log)
    assert log.last_stable_offset == 2
    log.append(c.batch(), 0)  # 7-8 c
    assert marker(log, 2, commit=True) == 9
    settle(log)
    assert log.last_stable_offset == 7
    assert marker(log, 3, commit=False) == 10
    settle(log)
    assert log.last_stable_offset == 11
    entries = log._segments[-1].txn_index.entries
    # a's stored LSO is b's first offset; c's is its marker + 1.
    assert entries == [AbortedTxn(1, 0, 6, 2), AbortedTxn(3, 7, 10, 11)]
    assert everything(log) == [(1, 0), (3, 7)]
    assert log.aborted_transactions(0, 7) == [(1, 0)]  # c starts at the bound
    assert log.aborted_transactions(7, 11) == [(3, 7)]  # a's marker is before 7
    assert log.aborted_transactions(6, 8) == [(1, 0), (3, 7)]
    assert log.aborted_transactions(11, 20) == []
    assert log.aborted_transactions(0, 0) == []


def test_marker_epochs(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    p = Producer(4, epoch=1)
    log.append(p.batch(), 0)
    with pytest.raises(InvalidProducerEpochError):
        marker(log, 4, commit=True, epoch=0)
    assert log.log_end_offset == 2 and log.ongoing_transactions == {4: 0}
    # A newer epoch (the coordinator fencing the producer) is accepted and becomes current.
    assert marker(log, 4, commit=False, epoch=3) == 2
    assert log.producers[4].epoch == 3 and log.ongoing_transactions == {}
    with pytest.raises(InvalidProducerEpochError):
        log.append(p.batch(), 0)  # epoch 1 is fenced now
    p.bump(3)
    log.append(p.batch(), 0)  # sequences started over with the epoch
    # A marker for a producer with nothing on here is written, and ends nothing.
    assert marker(log, 77, commit=False) == 5
    assert log.producers[77].epoch == 0
    assert everything(log) == [(4, 0)]
    assert log.ongoing_transactions == {4: 3}


def test_a_plain_batch_inside_the_producers_transaction_is_refused(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    p, other = Producer(6, epoch=1), Producer(7)
    log.append(p.batch(txn=False), 0)  # 0-1: idempotent, no transaction yet
    log.append(p.batch(), 0)  # 2-3: the transaction begins
    log.append(other.batch(txn=False), 0)  # 4-5: another producer is not concerned
    with pytest.raises(InvalidTxnStateError) as refused:
        log.append(p.batch(txn=False), 0)
    assert refused.value.error_code == 48  # INVALID_TXN_STATE
    assert log.log_end_offset == 6 and log.producers[6].last_seq == 3  # nothing staged
    # A retry of the refused batch is refused again, not taken for a duplicate.
    p.seq -= 2
    with pytest.raises(InvalidTxnStateError):
        log.append(p.batch(txn=False), 0)
    p.seq -= 2
    # Epoch and sequence are checked first (Kafka's order): an old epoch is fenced.
    stale = Producer(6, epoch=0)
    stale.seq = 4
    with pytest.raises(InvalidProducerEpochError):
        log.append(stale.batch(txn=False), 0)
    # Once the marker ends the transaction, the producer may write plain batches again.
    marker(log, 6, commit=True, epoch=1)
    assert log.append(p.batch(txn=False), 0).base_offset == 7


def test_a_plain_batch_after_a_transactional_one_in_one_append_is_refused(
    tmp_path: Path,
) -> None:
    log = open_log(tmp_path)
    p = Producer(8)
    records = p.batch() + p.batch(txn=False)
    with pytest.raises(InvalidTxnStateError):
        log.append(records, 0)
    assert log.log_end_offset == 0 and log.ongoing_transactions == {}


# --- restarts -------------------------------------------------------------------------------


def build_history(log: PartitionLog) -> None:
    """Aborts and commits across several segments, one transaction left open."""
    a, b, c = Producer(1), Producer(2), Producer(3)
    for _ in range(3):
        log.append(a.batch(), 0)
        log.append(b.batch(), 0)
        log.append(plain(), 0)
        marker(log, 1, commit=False)
        log.append(c.batch(), 0)
        marker(log, 2, commit=True)
        marker(log, 3, commit=False)
    log.append(b.batch(), 0)  # open
    settle(log)


def state(log: PartitionLog) -> tuple[object, ...]:
    settle(log)
    return (
        log.log_end_offset,
        log.last_stable_offset,
        dict(log.ongoing_transactions),
        everything(log),
        [log.aborted_transactions(o, o + 3) for o in range(log.log_end_offset)],
    )


def test_state_survives_a_clean_restart(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    build_history(log)
    assert len(log.segment_base_offsets) > 3
    before, files = state(log), txnindex_files(tmp_path)
    assert len(everything(log)) == 6 and log.ongoing_transactions
    log.close()
    doc = json.loads((tmp_path / DIR / f"{before[0]:020d}.snapshot").read_text())
    assert doc["version"] == 2 and doc["txns"] == [[2, before[1]]]
    log = open_log(tmp_path)
    assert state(log) == before
    assert txnindex_files(tmp_path) == files
    # And the open transaction carries on, then ends.
    marker(log, 2, commit=False)
    settle(log)
    assert log.last_stable_offset == log.log_end_offset
    assert everything(log)[-1] == (2, before[1])


def test_a_version_1_snapshot_still_loads(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    p = Producer(5)
    log.append(p.batch(txn=False), 0)
    log.close()
    path = tmp_path / DIR / f"{2:020d}.snapshot"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({"version": 1, "offset": 2, "producers": doc["producers"]}))
    log = open_log(tmp_path)
    assert log.producers[5].last_seq == 1 and log.ongoing_transactions == {}
    assert log.append(p.batch(), 0).base_offset == 2  # the sequence carries on


@pytest.mark.parametrize("recovery_point", [0, "middle"])
def test_recovery_rebuilds_txn_indexes_and_open_transactions(
    tmp_path: Path, recovery_point: int | str
) -> None:
    log = open_log(tmp_path)
    build_history(log)
    before, files = state(log), txnindex_files(tmp_path)
    bases = log.segment_base_offsets
    point = 0 if recovery_point == 0 else bases[len(bases) // 2]
    # kill -9: no close, no final snapshot; the unflushed part is re-validated at open.
    # Lose every txnindex past the recovery point, as if never written back.
    for base in files:
        if base >= point:
            (tmp_path / DIR / f"{base:020d}.txnindex").unlink()
    log = open_log(tmp_path, recover=True, recovery_point=point)
    assert log.recovered_segments > 0
    assert state(log) == before
    assert txnindex_files(tmp_path) == files


def test_rebuilt_index_files_and_torn_txnindex(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    build_history(log)
    before, files = state(log), txnindex_files(tmp_path)
    log.close()
    # A lost offset index makes the segment rebuild its indexes, txnindex included.
    first = min(files)
    (tmp_path / DIR / f"{first:020d}.index").unlink()
    (tmp_path / DIR / f"{first:020d}.txnindex").write_bytes(b"garbage")
    # A torn last entry elsewhere: the whole entries stay.
    last = max(files)
    with (tmp_path / DIR / f"{last:020d}.txnindex").open("ab") as f:
        f.write(b"\x00" * 10)
    log = open_log(tmp_path)
    assert state(log) == before
    assert txnindex_files(tmp_path) == files


# --- truncation and deletion ----------------------------------------------------------------


def test_truncation_reopens_and_forgets(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    a, b = Producer(1), Producer(2)
    log.append(a.batch(), 0)  # 0-1
    log.roll()
    log.append(b.batch(), 0)  # 2-3
    abort_a = marker(log, 1, commit=False)  # 4
    log.roll()
    abort_b = marker(log, 2, commit=False)  # 5
    settle(log)
    assert everything(log) == [(1, 0), (2, 2)]
    log.truncate_to(abort_b)  # b's marker goes: b is open again
    assert everything(log) == [(1, 0)]
    assert log.ongoing_transactions == {2: 2}
    settle(log)
    assert log.last_stable_offset == 2
    log.truncate_to(abort_a)  # and a's: its index entry goes with it
    assert everything(log) == [] and txnindex_files(tmp_path) == {}
    assert log.ongoing_transactions == {1: 0, 2: 2}
    settle(log)
    assert log.last_stable_offset == 0
    # Appends carry on from there, and the new marker is indexed afresh.
    assert marker(log, 2, commit=False) == 4
    assert everything(log) == [(2, 2)]
    log.truncate_to(3)  # b's only batch (2-3) goes: so does its transaction
    assert log.ongoing_transactions == {1: 0} and everything(log) == []


def test_deleted_segments_take_their_txn_index_along(tmp_path: Path) -> None:
    log = open_log(tmp_path, retention_ms=1_000)
    build_history(log)
    files = txnindex_files(tmp_path)
    second = sorted(files)[1]
    log.delete_records_before(second)  # the segments before the second indexed one go
    assert set(txnindex_files(tmp_path)) == set(files) - {min(files)}
    assert log.aborted_transactions(log.log_start_offset, log.log_end_offset) == everything(log)
    assert len(everything(log)) == 5
    # Retention: everything but the active segment.
    assert log.apply_retention(now_ms=1 << 50) > 0
    assert set(txnindex_files(tmp_path)) <= {log.segment_base_offsets[-1]}
    assert all(first >= 0 for _, first in everything(log))
    log.truncate_fully_and_start_at(500)
    assert txnindex_files(tmp_path) == {} and everything(log) == []
    assert log.ongoing_transactions == {} and log.last_stable_offset == 500


def test_lso_never_below_log_start(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    p = Producer(1)
    log.append(p.batch(), 0)  # 0-1, open
    log.roll()
    log.append(plain(), 0)
    settle(log)
    log.delete_records_before(2)
    assert log.last_stable_offset == 2


# Compaction of transactional data: tests/broker/log/test_log_txn_compaction.py.


# --- followers ------------------------------------------------------------------------------


def replicate(leader: PartitionLog, follower: PartitionLog, chunk: int) -> None:
    while follower.log_end_offset < leader.log_end_offset:
        data = leader.read(follower.log_end_offset, chunk, leader.log_end_offset)
        follower.append_as_follower(data)


@pytest.mark.parametrize("chunk", [1, 250, 1 << 20])
def test_followers_build_the_same_state(tmp_path: Path, chunk: int) -> None:
    leader = open_log(tmp_path / "leader")
    build_history(leader)
    follower = open_log(tmp_path / "follower", segment_bytes=250)  # rolls elsewhere
    replicate(leader, follower, chunk)
    assert state(follower) == state(leader)
    assert follower.producers.keys() == leader.producers.keys()
    # Same bytes, same entries (the stored LSO depends on the log only).
    entries = [e for s in follower._segments for e in s.txn_index.entries]
    assert entries == [e for s in leader._segments for e in s.txn_index.entries]
    follower.close()
    reopened = open_log(tmp_path / "follower", segment_bytes=250)
    assert state(reopened) == state(leader)


# --- a model ----------------------------------------------------------------------------------

Op = tuple[str, int, bool]
ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(["data", "data", "marker", "hw", "roll"]),
        st.integers(0, 2),
        st.booleans(),
    ),
    max_size=40,
)


class Model:
    """Brute force: every transaction as (producer, first offset, marker offset, aborted)."""

    def __init__(self) -> None:
        self.ongoing: dict[int, int] = {}
        self.done: list[tuple[int, int, int, bool]] = []

    def lso(self, hw: int) -> int:
        firsts = list(self.ongoing.values()) + [f for _, f, m, _ in self.done if m >= hw]
        return min([hw, *firsts])

    def aborted(self, fetch: int, upper: int) -> list[tuple[int, int]]:
        return [(p, f) for p, f, m, ab in self.done if ab and m >= fetch and f < upper]


def run_ops(log: PartitionLog, ops: list[Op]) -> tuple[Model, int]:
    model = Model()
    producers = {pid: Producer(pid) for pid in range(3)}
    hw = 0
    for kind, pid, flag in ops:
        if kind == "data":
            if not flag and pid in model.ongoing:
                # A plain batch inside the producer's transaction: refused, nothing written.
                producer, leo = producers[pid], log.log_end_offset
                with pytest.raises(InvalidTxnStateError):
                    log.append(producer.batch(1 + pid, txn=False), 0)
                producer.seq -= 1 + pid
                assert log.log_end_offset == leo
                continue
            offset = log.append(producers[pid].batch(1 + pid, txn=flag), 0).base_offset
            if flag:
                model.ongoing.setdefault(pid, offset)
        elif kind == "marker":
            offset = marker(log, pid, commit=flag)
            first = model.ongoing.pop(pid, None)
            if first is not None:
                model.done.append((pid, first, offset, not flag))
        elif kind == "hw":
            hw = max(hw, log.log_end_offset - (pid if flag else 0))
            log.high_watermark = hw
        else:
            log.roll()
    return model, hw


def check(log: PartitionLog, model: Model, hw: int) -> None:
    log.high_watermark = hw
    assert log.last_stable_offset == model.lso(hw)
    leo = log.log_end_offset
    for fetch in range(leo + 1):
        for upper in {fetch, fetch + 1, fetch + 4, leo + 1}:
            assert log.aborted_transactions(fetch, upper) == model.aborted(fetch, upper)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_strategy)
def test_matches_a_brute_force_model(ops: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory)
        log = open_log(path, segment_bytes=300)
        model, hw = run_ops(log, ops)
        check(log, model, hw)
        leo = log.log_end_offset
        follower = open_log(path / "f", segment_bytes=200)
        replicate(log, follower, 180)
        check(follower, model, hw)
        follower.close_handles()
        log.close()
        check(open_log(path), model, leo)  # a restart forgets what was unreplicated
        # A crash: no close, every segment re-validated at open.
        check(open_log(path / "f", recover=True, segment_bytes=200), model, leo)
