"""Compaction of transactional data (kops.broker.log.txn_cleaning): aborted records
go, committed ones compact by key, markers go after their delete horizon, the last
batch of each producer stays for a replay, and the state a restart or a crash
rebuilds is the state the pass left."""

from __future__ import annotations

from pathlib import Path

import pytest

from kops.broker.log import InvalidProducerEpochError, LogConfig, PartitionLog
from kops.broker.log import cleaner as cleaner_mod
from kops.broker.log.transactions import is_marker
from kops.broker.log.txn_cleaning import ATTR_DELETE_HORIZON, delete_horizon, with_delete_horizon
from kops.protocol.batch import (
    ATTR_TRANSACTIONAL,
    CONTROL_ABORT,
    BatchHeader,
    build_batch,
    build_marker,
    decode_records,
    iter_batches,
    marker_type,
    parse_header,
)
from tests.broker.log.test_log_transactions import DIR, marker, settle, state, txnindex_files

RETENTION = 1_000  # delete.retention.ms
T_PASS = 10_000  # when the first pass runs
# (offset, key, value) of a data record
Row = tuple[int, bytes | None, bytes | None]


def config(**extra: object) -> LogConfig:
    return LogConfig(  # type: ignore[arg-type]
        segment_bytes=extra.pop("segment_bytes", 300),
        index_interval_bytes=0,
        cleanup_policy="compact",
        delete_retention_ms=RETENTION,
        **extra,
    )


def open_log(path: Path, *, recover: bool = False, recovery_point: int = 0) -> PartitionLog:
    return PartitionLog(path / DIR, config(), recover=recover, recovery_point=recovery_point)


class Writer:
    """One producer id's batches of one record, with its sequence numbers."""

    def __init__(self, log: PartitionLog, pid: int) -> None:
        self.log, self.pid, self.seq = log, pid, 0

    def send(self, key: bytes, value: bytes, *, txn: bool = True) -> int:
        batch = build_batch(
            [(key, value, [])],
            timestamp_ms=1_000,
            producer_id=self.pid,
            producer_epoch=0,
            base_sequence=self.seq,
            attributes=ATTR_TRANSACTIONAL if txn else 0,
        )
        self.seq += 1
        return self.log.append(batch, 0).base_offset


def plain(log: PartitionLog, key: bytes, value: bytes) -> int:
    return log.append(build_batch([(key, value, [])], timestamp_ms=1_000), 0).base_offset


def history(path: Path, *, one_group: bool = False) -> PartitionLog:
    """A commits "x" on even rounds and aborts on odd ones; B aborts every round (keys
    of its own, which key compaction alone would keep); plain records of key "k".
    `one_group`: bigger segments from then on, so that a pass merges all into one."""
    log = open_log(path)
    a, b = Writer(log, 1), Writer(log, 2)
    for i in range(6):
        plain(log, b"k", b"p%d" % i)
        a.send(b"x", b"a-%s%d" % (b"c" if i % 2 == 0 else b"a", i))
        b.send(b"y%d" % i, b"b-a%d" % i)
        marker(log, 1, commit=i % 2 == 0)
        marker(log, 2, commit=False)
    plain(log, b"k", b"last")
    log.roll()
    settle(log)
    if one_group:
        log.update_config(config(segment_bytes=1 << 20))
    return log


def batches(log: PartitionLog) -> list[tuple[BatchHeader, bytes]]:
    data = bytes(log.read(0, 1 << 24, log.log_end_offset))
    return [(h, data[p : p + h.size]) for p, h in iter_batches(data)]


def view(log: PartitionLog, *, committed: bool) -> list[Row]:
    """The data records a consumer gets: read_committed drops those of the aborted
    transactions Fetch lists, as clients do (an aborted producer id from its first
    offset until its ABORT marker)."""
    settle(log)
    upper = log.last_stable_offset if committed else log.log_end_offset
    pending = sorted(log.aborted_transactions(0, upper), key=lambda e: e[1]) if committed else []
    skipping: set[int] = set()
    rows: list[Row] = []
    for header, raw in batches(log):
        if header.base_offset >= upper:
            break
        while pending and pending[0][1] <= header.last_offset:
            skipping.add(pending.pop(0)[0])
        if header.is_control:
            if header.producer_id in skipping and marker_type(raw) == CONTROL_ABORT:
                skipping.discard(header.producer_id)
            continue
        if header.is_transactional and header.producer_id in skipping:
            continue
        rows += [(r.offset, r.key, r.value) for r in decode_records(raw)]
    return rows


def latest(rows: list[Row]) -> dict[bytes | None, bytes | None]:
    return {key: value for _, key, value in rows}


def markers(log: PartitionLog) -> list[BatchHeader]:
    return [h for h, _ in batches(log) if is_marker(h)]


def test_aborted_records_go_and_committed_ones_compact_by_key(tmp_path: Path) -> None:
    log = history(tmp_path)
    committed_before = view(log, committed=True)
    assert any(v.startswith(b"b-a") for _, _, v in view(log, committed=False))  # type: ignore[union-attr]
    stats = log.compact(now_ms=T_PASS, force=True)
    assert stats.aborted_records_removed == 9  # A's three, B's six

    # No reader sees an aborted record any more, read_uncommitted included.
    rows = view(log, committed=False)
    assert view(log, committed=True) == rows
    assert not [v for _, _, v in rows if v is not None and v[:3] in (b"a-a", b"b-a")]
    # Committed records compacted by key like the others: the latest value of each.
    assert latest(rows) == latest(committed_before) == {b"k": b"last", b"x": b"a-c4"}
    assert [v for _, _, v in rows] == [b"a-c4", b"last"]
    # Each producer's last data batch stays, empty: A's and B's aborted round 5.
    a_last, b_last = (log.producers[pid].batches[-1].first_offset for pid in (1, 2))
    empty = [h for h, _ in batches(log) if not h.is_control and h.records_count == 0]
    assert [(h.base_offset, h.producer_id, h.base_sequence) for h in empty] == [
        (a_last, 1, 5),
        (b_last, 2, 5),
    ]
    # Only the transactions that kept a batch keep their index entry.
    assert log.aborted_transactions(0, log.log_end_offset) == [(1, a_last), (2, b_last)]
    assert log.ongoing_transactions == {} and log.last_stable_offset == log.log_end_offset


def test_markers_go_once_their_data_is_gone_and_the_horizon_passed(tmp_path: Path) -> None:
    log = history(tmp_path)
    assert len(markers(log)) == 12
    log.compact(now_ms=T_PASS, force=True)
    rows = view(log, committed=True)
    # Every marker is still there; those with no batch of theirs left carry a horizon.
    found = markers(log)
    assert len(found) == 12
    stamped = [h for h in found if delete_horizon(h) is not None]
    kept = [h.base_offset for h in found if delete_horizon(h) is None]
    assert {delete_horizon(h) for h in stamped} == {T_PASS + RETENTION}
    assert len(stamped) == 9  # all but A's commit of "a-c4" and the two last aborts
    # The control record keeps its timestamp (the marker's, 2000 in these tests).
    raw = next(r for h, r in batches(log) if h.base_offset == stamped[0].base_offset)
    assert [r.timestamp for r in decode_records(raw)] == [2_000]
    assert stamped[0].max_timestamp == 2_000
    assert log.cleaner_state.tombstone_due_ms == T_PASS + RETENTION

    # Before the horizon a pass removes nothing; the horizon makes one due by itself.
    assert log.compact(now_ms=T_PASS + RETENTION - 1, force=True).markers_removed == 0
    assert log.begin_compaction(T_PASS + RETENTION - 1) is None
    stats = log.compact(now_ms=T_PASS + RETENTION)
    assert stats.markers_removed == 9
    assert [h.base_offset for h in markers(log)] == kept
    assert view(log, committed=True) == view(log, committed=False) == rows
    assert log.cleaner_state.tombstone_due_ms is None
    settle(log)
    assert log.ongoing_transactions == {} and log.last_stable_offset == log.log_end_offset


def test_the_state_a_restart_or_a_replay_rebuilds_is_the_cleaned_one(tmp_path: Path) -> None:
    log = history(tmp_path)
    log.compact(now_ms=T_PASS, force=True)
    log.compact(now_ms=T_PASS + RETENTION, force=True)
    after, rows, files = state(log), view(log, committed=True), txnindex_files(tmp_path)
    log.close()
    log = open_log(tmp_path)
    assert state(log) == after and view(log, committed=True) == rows
    # A crash with no producer snapshot and no txnindex: everything from a replay.
    log.close_handles()
    for path in (tmp_path / DIR).iterdir():
        if path.suffix in (".snapshot", ".txnindex"):
            path.unlink()
    log = open_log(tmp_path, recover=True, recovery_point=0)
    assert state(log) == after and view(log, committed=True) == rows
    assert txnindex_files(tmp_path) == files


def test_idempotence_and_fencing_survive_compaction_and_a_replay(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    c, t = Writer(log, 3), Writer(log, 4)
    for i in range(4):
        c.send(b"k", b"c%d" % i, txn=False)  # idempotent, not transactional
    t.send(b"t", b"t0")
    marker(log, 4, commit=False)
    # The coordinator bumped t's epoch with its abort: only the marker knows epoch 5.
    assert log.append_marker(4, 5, False, 5, 0, now_ms=2_000) > 0
    plain(log, b"k", b"later")  # supersedes every record of c
    log.roll()
    settle(log)
    stats = log.compact(now_ms=T_PASS, force=True)
    assert stats.records_removed == 5
    remaining = batches(log)
    assert [(h.producer_id, h.records_count) for h, _ in remaining if not h.is_control] == [
        (3, 0),  # c's last batch, emptied
        (-1, 1),
    ]
    # t's last marker is kept whole (its epoch); its first one goes after the horizon.
    log.compact(now_ms=T_PASS + RETENTION, force=True)
    assert [(h.producer_id, h.producer_epoch) for h in markers(log)] == [(4, 5)]

    log.close_handles()
    for path in (tmp_path / DIR).glob("*.snapshot"):
        path.unlink()
    log = open_log(tmp_path, recover=True, recovery_point=0)
    assert log.producers[3].last_seq == 3 and log.producers[4].epoch == 5
    leo = log.log_end_offset
    # A retry of c's last batch is known as a duplicate, and c carries on in sequence.
    c.log, c.seq = log, 3
    first = c.send(b"k", b"c3", txn=False)
    assert log.log_end_offset == leo and first < leo
    assert c.send(b"k", b"c4", txn=False) == leo
    t.log = log
    with pytest.raises(InvalidProducerEpochError):
        t.send(b"t", b"stale")  # epoch 0 stays fenced


def test_a_delete_horizon_keeps_the_records_and_their_times() -> None:
    raw = build_marker(7, 1, False, 3, base_offset=40, timestamp_ms=5_000)
    stamped = with_delete_horizon(parse_header(raw), raw, 99_000)
    header = parse_header(stamped)
    assert header.attributes == parse_header(raw).attributes | ATTR_DELETE_HORIZON
    assert (header.base_timestamp, header.max_timestamp) == (99_000, 5_000)
    assert marker_type(stamped) == CONTROL_ABORT
    assert [(r.offset, r.timestamp, r.key, r.value) for r in decode_records(stamped)] == [
        (r.offset, r.timestamp, r.key, r.value) for r in decode_records(raw)
    ]


STEPS = ["cleaned", "trailing-deleted", "index-swap", "log-swap", "old-deleted",
         "index-final", "swapped"]  # fmt: skip
COMMITTED_AT = STEPS.index("log-swap")  # .log.swap in place: the pass is finished at open


class SimulatedCrash(BaseException):
    pass


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_during_the_swap_leaves_the_state_before_or_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    reference = history(tmp_path / "reference", one_group=True)
    before = state(reference), view(reference, committed=True)
    segments = len(reference.segment_base_offsets)
    reference.compact(now_ms=T_PASS, force=True)
    after = state(reference), view(reference, committed=True)
    # One segment now, its txnindex the kept entries of all the members'.
    assert len(reference.segment_base_offsets) == 2 < segments
    assert len(txnindex_files(tmp_path / "reference")) == 1
    assert after != before

    log = history(tmp_path, one_group=True)

    def hook(at: str) -> None:
        if at == step:
            raise SimulatedCrash(at)

    monkeypatch.setattr(cleaner_mod, "crash_hook", hook)
    with pytest.raises(SimulatedCrash):
        log.compact(now_ms=T_PASS, force=True)
    log.close_handles()
    monkeypatch.setattr(cleaner_mod, "crash_hook", None)
    log = open_log(tmp_path)
    expected = after if STEPS.index(step) >= COMMITTED_AT else before
    assert (state(log), view(log, committed=True)) == expected
