"""Log compaction of a PartitionLog (kops.broker.log.cleaner), storage only."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from pathlib import Path

import cramjam
import pytest

from kops.broker.housekeeping import compact_all_async
from kops.broker.log import InvalidRecordError, LogConfig, LogManager, PartitionLog
from kops.broker.log import cleaner as cleaner_mod
from kops.protocol.batch import (
    COMPRESSION_GZIP,
    COMPRESSION_LZ4,
    COMPRESSION_SNAPPY,
    COMPRESSION_ZSTD,
    build_batch,
    decode_records,
    iter_batches,
    parse_header,
)

Rec = tuple[int, bytes | None, bytes | None]


def one(key: bytes | None, value: bytes | None, ts: int = 1_000) -> bytes:
    return build_batch([(key, value, [])], timestamp_ms=ts)


SIZE = len(one(b"k0", b"v-00"))  # every single-record batch below has this size


def open_log(path: Path, *, recover: bool = False, **cfg: object) -> PartitionLog:
    cfg.setdefault("segment_bytes", SIZE * 4)  # four single-record batches per segment
    cfg.setdefault("index_interval_bytes", 0)  # index every batch: exercises the indexes
    cfg.setdefault("cleanup_policy", "compact")
    return PartitionLog(path / "t-0", LogConfig(**cfg), recover=recover)  # type: ignore[arg-type]


class Writer:
    """Appends single-record batches with increasing timestamps; remembers every record."""

    def __init__(self, log: PartitionLog, ts: int = 1_000) -> None:
        self.log = log
        self.ts = ts
        self.written: list[Rec] = []

    def put(self, key: bytes, value: bytes | None) -> int:
        self.ts += 1
        result = self.log.append(one(key, value, self.ts), 0, now_ms=self.ts)
        self.log.high_watermark = self.log.log_end_offset
        self.written.append((result.base_offset, key, value))
        return result.base_offset


def records(log: PartitionLog) -> list[Rec]:
    out: list[Rec] = []
    for _, raw in log.batches(log.log_start_offset):
        out += [(r.offset, r.key, r.value) for r in decode_records(raw)]
    return out


def latest(written: list[Rec], below: int | None = None) -> dict[bytes | None, Rec]:
    out: dict[bytes | None, Rec] = {}
    for rec in written:
        if below is None or rec[0] < below:
            out[rec[1]] = rec
    return out


def expected_after_clean(written: list[Rec], active_base: int) -> list[Rec]:
    """Closed part: the last record per key; active segment: everything."""
    last = {rec[0] for rec in latest(written, active_base).values()}
    return [r for r in written if r[0] >= active_base or r[0] in last]


def leftovers(log: PartitionLog) -> list[str]:
    return sorted(p.name for p in log.directory.iterdir() if p.name.endswith((".cleaned", ".swap")))


# --- the basics --------------------------------------------------------------------------


def test_keeps_latest_value_per_key_with_original_offsets(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    w = Writer(log)
    for i in range(10):
        for key in (b"a", b"b", b"c"):
            w.put(key, b"%s-%02d" % (key, i))
    active = log.segment_base_offsets[-1]
    active_bytes = log._segments[-1].log_path.read_bytes()
    leo, start = log.log_end_offset, log.log_start_offset

    stats = log.compact(now_ms=10_000)

    assert stats.records_removed > 0 and stats.logs_cleaned == 1
    assert records(log) == expected_after_clean(w.written, active)
    assert (log.log_end_offset, log.log_start_offset) == (leo, start)
    # The active segment is neither read nor rewritten.
    assert log.segment_base_offsets[-1] == active
    assert log._segments[-1].log_path.read_bytes() == active_bytes
    assert leftovers(log) == []

    # Once everything is closed, exactly one record per key is left: the latest.
    log.roll()
    assert log.begin_compaction(20_000) is None  # 2 dirty records of 5: ratio below 0.5
    log.compact(now_ms=20_000, force=True)
    assert records(log) == sorted(latest(w.written).values())
    assert [r[2] for r in records(log)] == [b"a-09", b"b-09", b"c-09"]
    assert log.log_end_offset == leo


def test_reads_list_offsets_and_indexes_after_cleaning(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    w = Writer(log)
    for i in range(8):
        for key in (b"a", b"b", b"c", b"d"):
            w.put(key, b"%s-%02d" % (key, i))
    w.put(b"e", b"e-00")
    log.roll()
    log.compact(now_ms=10_000)
    survivors = records(log)
    assert [r[2] for r in survivors] == [b"a-07", b"b-07", b"c-07", b"d-07", b"e-00"]

    def check(plog: PartitionLog) -> None:
        assert records(plog) == survivors
        for offset in range(plog.log_end_offset):
            data = plog.read(offset, 1 << 20, plog.log_end_offset)
            got = [r.offset for _, h in iter_batches(data) for r in decode_records(data[_:])][:1]
            # The first record returned is the first survivor at or after `offset`.
            assert got == [next(r[0] for r in survivors if r[0] >= offset)]
        # ListOffsets by timestamp: each survivor's own timestamp finds it.
        by_offset = {rec[0]: 1_000 + i + 1 for i, rec in enumerate(w.written)}
        for offset, _, _ in survivors:
            assert plog.offset_for_timestamp(by_offset[offset]) == (offset, by_offset[offset])
        # A removed record's timestamp finds the next survivor.
        assert plog.offset_for_timestamp(by_offset[0])[0] == survivors[0][0]  # type: ignore[index]
        assert plog.max_timestamp_and_offset() == (survivors[-1][0], by_offset[survivors[-1][0]])

    check(log)
    log.close()
    reopened = open_log(tmp_path)
    check(reopened)
    reopened.close()
    # Indexes rebuilt from scratch agree with the ones the cleaner wrote.
    for path in (tmp_path / "t-0").glob("*index"):
        path.unlink()
    check(open_log(tmp_path, recover=True))


def test_partial_batches_keep_offsets_and_span(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=1 << 20)
    log.append(
        build_batch([(b"a", b"a1", []), (b"b", b"b1", []), (b"c", b"c1", [])], timestamp_ms=5),
        0,
        now_ms=5,
    )
    log.append(build_batch([(b"a", b"a2", []), (b"c", b"c2", [])], timestamp_ms=6), 0, now_ms=6)
    log.roll()
    log.append(one(b"z", b"z1"), 0, now_ms=7)
    log.high_watermark = log.log_end_offset
    log.compact(now_ms=100)
    batches = [parse_header(raw) for _, raw in log.batches(0)]
    # Batch 0 lost a1 and c1 but still spans offsets 0-2; batch 1 is untouched.
    assert [(h.base_offset, h.last_offset, h.records_count) for h in batches] == [
        (0, 2, 1),
        (3, 4, 2),
        (5, 5, 1),
    ]
    assert records(log) == [(1, b"b", b"b1"), (3, b"a", b"a2"), (4, b"c", b"c2"), (5, b"z", b"z1")]
    # A follower fetching this log accepts the sparse batch as it is.
    follower = PartitionLog(tmp_path / "f-0", LogConfig(cleanup_policy="compact"), recover=False)
    follower.append_as_follower(log.read(0, 1 << 20, log.log_end_offset))
    assert records(follower) == records(log)
    assert follower.log_end_offset == log.log_end_offset


def test_list_offsets_by_time_inside_a_cleaned_batch(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=1 << 20)
    keys = [b"a", b"b", b"c", b"d"]
    log.append(
        build_batch(
            [(k, k + b"1", []) for k in keys],
            record_timestamps=[100, 110, 120, 130],
            compression=COMPRESSION_LZ4,
        ),
        0,
    )
    log.append(build_batch([(b"a", b"a2", []), (b"c", b"c2", [])], timestamp_ms=140), 0)
    log.roll()
    log.append(one(b"z", b"z1", ts=150), 0)
    log.high_watermark = log.log_end_offset
    log.compact(now_ms=1_000)
    assert [r[0] for r in records(log)] == [1, 3, 4, 5, 6]
    # The records at 0 and 2 are gone: their times find the next survivor, exactly.
    assert log.offset_for_timestamp(100) == (1, 110)
    assert log.offset_for_timestamp(111) == (3, 130)
    assert log.offset_for_timestamp(131) == (4, 140)
    assert log.offset_for_timestamp(141) == (6, 150)


@pytest.mark.parametrize(
    "codec", [COMPRESSION_GZIP, COMPRESSION_SNAPPY, COMPRESSION_LZ4, COMPRESSION_ZSTD]
)
def test_compressed_batches(tmp_path: Path, codec: int) -> None:
    log = open_log(tmp_path, segment_bytes=1 << 20)
    kept_whole = build_batch([(b"x", b"x1", []), (b"y", b"y1", [])], compression=codec)
    log.append(kept_whole, 0)
    log.append(
        build_batch([(b"a", b"a1", []), (b"b", b"b1", []), (b"c", b"c1", [])], compression=codec),
        0,
    )
    log.append(build_batch([(b"b", b"b2", [])], compression=codec), 0)
    log.roll()
    log.append(one(b"z", b"z1"), 0)
    log.high_watermark = log.log_end_offset
    log.compact(now_ms=10**13)
    raws = [raw for _, raw in log.batches(0)]
    assert records(log) == [
        (0, b"x", b"x1"),
        (1, b"y", b"y1"),
        (2, b"a", b"a1"),
        (4, b"c", b"c1"),
        (5, b"b", b"b2"),
        (6, b"z", b"z1"),
    ]
    # Untouched batches stay byte for byte (compressed); rewritten ones are uncompressed.
    assert raws[0][16:] == kept_whole[16:] and parse_header(raws[0]).compression == codec
    assert parse_header(raws[1]).compression == 0
    assert parse_header(raws[2]).compression == codec


def test_xerial_snappy_is_decoded(tmp_path: Path) -> None:
    """The Java client and kafka-python frame snappy (xerial); librdkafka does not."""
    plain = build_batch([(b"a", b"a1", []), (b"b", b"b1", [])], timestamp_ms=5)
    body = plain[61:]
    framed = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
    for chunk in (body[:7], body[7:]):
        block = bytes(cramjam.snappy.compress_raw(chunk))
        framed += struct.pack(">i", len(block)) + block
    batch = build_batch([(b"a", b"a1", []), (b"b", b"b1", [])], timestamp_ms=5)
    from kops.protocol.batch import _pack_batch

    header = parse_header(batch)
    xerial = _pack_batch(
        framed, 0, -1, COMPRESSION_SNAPPY, 1, 5, 5, -1, -1, -1, header.records_count
    )
    assert [(r.key, r.value) for r in decode_records(xerial)] == [(b"a", b"a1"), (b"b", b"b1")]
    log = open_log(tmp_path)
    log.append(xerial, 0)  # the null-key check decodes it too


def test_null_keys_are_refused_only_on_compacted_topics(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for batch in (
        one(None, b"v"),
        build_batch([(b"k", b"v", []), (None, b"v", [])], compression=COMPRESSION_LZ4),
    ):
        with pytest.raises(InvalidRecordError) as err:
            log.append(batch, 0)
        assert err.value.error_code == 87  # INVALID_RECORD, as Kafka >= 2.5 answers
    assert log.log_end_offset == 0
    assert log.append(one(b"k", None), 0).base_offset == 0  # tombstones are fine
    plain = open_log(tmp_path / "plain", cleanup_policy="delete")
    assert plain.append(one(None, b"v"), 0).base_offset == 0


# --- tombstones ----------------------------------------------------------------------------


def test_tombstones_outlive_delete_retention_then_go(tmp_path: Path) -> None:
    retention = 60_000
    log = open_log(tmp_path, delete_retention_ms=retention)
    w = Writer(log, ts=0)  # record timestamps far in the past do not shorten the wait
    w.put(b"a", b"a1")
    w.put(b"b", b"b1")
    w.put(b"a", None)
    w.put(b"c", b"c1")
    log.roll()
    t0 = 1_000_000

    log.compact(now_ms=t0)  # first pass: a1 goes, its tombstone stays
    assert records(log) == [(1, b"b", b"b1"), (2, b"a", None), (3, b"c", b"c1")]
    assert log.cleaner_state.tombstone_due_ms == t0 + retention

    assert log.begin_compaction(t0 + retention - 1) is None  # not dirty, nothing due
    log.compact(now_ms=t0 + retention - 1, force=True)  # even a forced pass keeps it
    assert (2, b"a", None) in records(log)

    stats = log.compact(now_ms=t0 + retention)  # due: runs without new data
    assert stats.tombstones_removed == 1
    assert records(log) == [(1, b"b", b"b1"), (3, b"c", b"c1")]
    assert log.cleaner_state.tombstone_due_ms is None
    assert log.log_end_offset == 4


def test_tombstone_clock_starts_at_first_clean_and_survives_reopen(tmp_path: Path) -> None:
    retention = 60_000
    log = open_log(tmp_path, delete_retention_ms=retention, min_cleanable_dirty_ratio=0)
    w = Writer(log)
    for key in (b"a", b"b", b"c", b"d"):
        w.put(key, key + b"1")
    log.roll()
    log.compact(now_ms=100_000)  # offsets 0-3 first cleaned at 100 s
    w.put(b"a", None)
    w.put(b"e", b"e1")
    log.roll()
    log.compact(now_ms=130_000)  # the tombstone (offset 4) first cleaned at 130 s
    assert (4, b"a", None) in records(log)
    log.close()

    log = open_log(tmp_path, delete_retention_ms=retention, min_cleanable_dirty_ratio=0)
    log.high_watermark = log.log_end_offset
    assert log.cleaner_state.first_cleaned_ms(4) == 130_000
    log.compact(now_ms=160_000 + 30_000 - 1, force=True)  # 59.999 s after its first clean
    assert (4, b"a", None) in records(log)
    log.compact(now_ms=190_000)
    assert records(log) == [(1, b"b", b"b1"), (2, b"c", b"c1"), (3, b"d", b"d1"), (5, b"e", b"e1")]


# --- triggers and bookkeeping --------------------------------------------------------------


def test_dirty_ratio_trigger_and_persisted_clean_point(tmp_path: Path) -> None:
    log = open_log(tmp_path, min_cleanable_dirty_ratio=0.5)
    w = Writer(log)
    for i in range(4):
        for key in (b"a", b"b", b"c", b"d"):
            w.put(key, b"%s%d" % (key, i))
    log.roll()
    assert log.compact(now_ms=1).logs_cleaned == 1
    first_dirty = log.cleaner_state.dirty_offset
    assert first_dirty == log.segment_base_offsets[-1]
    assert log.begin_compaction(2) is None  # nothing dirty

    for key in (b"a", b"b", b"c", b"d"):
        w.put(key, key + b"-new")
    w.put(b"e", b"e")  # fills a segment and starts the next: one dirty segment
    log.high_watermark = log.log_end_offset
    closed = log._segments[:-1]
    dirty = sum(s.size for s in closed if s.next_offset > first_dirty)
    assert dirty / sum(s.size for s in closed) >= 0.5
    log.close()

    log = open_log(tmp_path, min_cleanable_dirty_ratio=0.9)
    log.high_watermark = log.log_end_offset  # the broker does this at open
    assert log.cleaner_state.dirty_offset == first_dirty  # persisted
    assert log.begin_compaction(3) is None  # below 0.9
    log.update_config(
        LogConfig(
            segment_bytes=SIZE * 4,
            index_interval_bytes=0,
            cleanup_policy="compact",
            min_cleanable_dirty_ratio=0.5,
        )
    )
    assert log.compact(now_ms=3).logs_cleaned == 1
    assert records(log)[:4] == [
        (16, b"a", b"a-new"),
        (17, b"b", b"b-new"),
        (18, b"c", b"c-new"),
        (19, b"d", b"d-new"),
    ]


def test_not_compacted_and_below_high_watermark(tmp_path: Path) -> None:
    plain = open_log(tmp_path / "plain", cleanup_policy="delete")
    Writer(plain).put(b"a", b"1")
    plain.roll()
    assert plain.compact(now_ms=1, force=True).logs_cleaned == 0

    log = open_log(tmp_path, cleanup_policy="compact,delete")
    w = Writer(log)
    for i in range(12):
        w.put(b"a", b"%d" % i)
    log.high_watermark = 5  # inside the second segment: only the first is cleanable
    log.compact(now_ms=1)
    assert [r[0] for r in records(log)] == [3, *range(4, 12)]


def test_map_cap_spreads_a_pass_over_several(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    w = Writer(log)
    for i in range(16):
        w.put(b"k%02d" % (i % 6), b"%d" % i)
    log.roll()
    job = log.begin_compaction(1, max_map_keys=3)
    assert job is not None
    job.run()
    assert job.end_index == 1  # stopped after the first segment's four keys
    log.finish_compaction(job)
    assert log.cleaner_state.dirty_offset == 4
    log.compact(now_ms=2)
    assert records(log) == sorted(latest(w.written).values())


def test_segments_changed_while_cleaning_discards_the_pass(tmp_path: Path) -> None:
    log = open_log(tmp_path, cleanup_policy="compact,delete", retention_ms=98_995)
    w = Writer(log)
    for i in range(12):
        w.put(b"k%d" % (i % 2), b"%d" % i)
    log.roll()
    before = records(log)
    job = log.begin_compaction(1_000)
    assert job is not None
    job.run()
    assert log.apply_retention(now_ms=100_000) > 0  # retention ran while the job worked
    kept = records(log)
    assert log.finish_compaction(job).logs_cleaned == 0
    assert records(log) == kept and set(kept) <= set(before)
    assert leftovers(log) == []
    assert log.compact(now_ms=2_000).logs_cleaned == 1  # the next pass is fine


def test_log_manager_compact_all(tmp_path: Path) -> None:
    manager = LogManager(tmp_path)
    config = LogConfig(segment_bytes=SIZE * 4, cleanup_policy="compact")
    logs = [manager.open_partition("t", p, config) for p in range(2)]
    manager.open_partition("plain", 0, LogConfig(segment_bytes=SIZE * 4))
    for plog in logs:
        w = Writer(plog)
        for i in range(10):
            w.put(b"k", b"%d" % i)
        plog.roll()
    assert manager.compact_all(now_ms=1).logs_cleaned == 2
    for plog in logs:
        assert records(plog) == [(9, b"k", b"9")]
    for plog in logs:
        Writer(plog).put(b"k", b"x")
        plog.roll()
    stats = asyncio.run(compact_all_async(manager, now_ms=2))
    assert stats.logs_cleaned == 2
    assert [records(p) for p in logs] == [[(10, b"k", b"x")]] * 2
    manager.close()


# --- crashes during the swap ---------------------------------------------------------------


class SimulatedCrash(BaseException):
    pass


def build_crash_scenario(path: Path) -> tuple[PartitionLog, Writer]:
    """Closed segments of four single-record batches each, shaped so that one pass has

    group [s0 s1] (both keep records), group [s2 s3] (s3 is left empty: deleted
    outright before the swap), group [s4 s5] (all superseded: deleted, no swap) and
    [s6] (unchanged: left alone), with segment.bytes raised to two segments for it.
    """
    log = open_log(path)
    w = Writer(log)
    for row in (
        (b"a", b"b", b"c", b"d"),
        (b"e", b"b", b"c", b"d"),
        (b"f", b"b", b"c", b"d"),
        (b"b", b"c", b"d", b"g"),
        (b"b", b"c", b"d", b"g"),
        (b"b", b"c", b"d", b"g"),
        (b"b", b"c", b"d", b"g"),
    ):
        for key in row:
            n = sum(1 for r in w.written if r[1] == key) + 1
            w.put(key, None if (key == b"c" and n == 7) else b"%s%d" % (key, n))
    w.put(b"h", b"h1")
    w.put(b"b", b"b8")  # in the active segment: b7 stays this pass
    log.update_config(
        LogConfig(segment_bytes=SIZE * 8, index_interval_bytes=0, cleanup_policy="compact")
    )
    return log, w


def test_crash_scenario_has_the_intended_shape(tmp_path: Path) -> None:
    log, _ = build_crash_scenario(tmp_path)
    job = log.begin_compaction(10_000)
    assert job is not None
    job.run()
    shape = [
        ([m.base for m in g.members], g.covered, [m.base for m in g.trailing], g.swap)
        for g in job.groups
    ]
    assert shape == [
        ([0, 4], 2, [], True),
        ([8, 12], 1, [12], True),
        ([16, 20], 0, [16, 20], False),
        ([24], 1, [], False),
    ]
    log.finish_compaction(job)
    assert log.segment_base_offsets == [0, 8, 24, 28]


STEPS = ["cleaned", "trailing-deleted", "index-swap", "log-swap", "old-deleted",
         "index-final", "swapped"]  # fmt: skip
# Per group of the scenario's pass: offsets the cleaned segment covers, then offsets of
# its trailing members (deleted outright before the swap's commit point).
GROUPS = {1: ((0, 8), (8, 8)), 2: ((8, 12), (12, 16)), 3: ((16, 16), (16, 24))}
CRASHES = [(step, 2) for step in STEPS] + [
    ("cleaned", 3),
    ("trailing-deleted", 3),
    ("index-swap", 1),
    ("log-swap", 1),
]


@pytest.fixture
def crash_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, int], None]:
    """arm(step, n): the n-th time the swap reaches `step`, the "process" dies."""
    seen: dict[str, int] = {}
    target: list[tuple[str, int]] = []

    def hook(step: str) -> None:
        seen[step] = seen.get(step, 0) + 1
        if target and (step, seen[step]) == target[0]:
            raise SimulatedCrash(step)

    def arm(step: str, occurrence: int) -> None:
        seen.clear()
        target[:] = [(step, occurrence)]

    monkeypatch.setattr(cleaner_mod, "crash_hook", hook)
    return arm


@pytest.fixture(scope="module")
def cleaned_reference(tmp_path_factory: pytest.TempPathFactory) -> list[Rec]:
    """What the scenario's pass produces without a crash."""
    reference, w = build_crash_scenario(tmp_path_factory.mktemp("reference"))
    reference.compact(now_ms=10_000)
    cleaned = records(reference)
    reference.close()
    active_base = 28
    assert {r[1]: r for r in cleaned if r[0] < active_base} == latest(w.written, active_base)
    return cleaned


@pytest.mark.parametrize(("step", "group"), CRASHES)
def test_crash_at_each_swap_step_loses_nothing(
    tmp_path: Path,
    crash_at: Callable[[str, int], None],
    cleaned_reference: list[Rec],
    step: str,
    group: int,
) -> None:
    cleaned = cleaned_reference
    log, _ = build_crash_scenario(tmp_path)
    original = records(log)
    leo = log.log_end_offset
    crash_at(step, group)
    with pytest.raises(SimulatedCrash):
        log.compact(now_ms=10_000)
    log.close_handles()  # the process dies here: nothing else is written
    if step in ("index-swap", "log-swap", "old-deleted", "index-final"):
        assert leftovers(log)

    reopened = open_log(tmp_path, recover=True, segment_bytes=SIZE * 8)
    reopened.high_watermark = reopened.log_end_offset  # as the broker does at open
    got = records(reopened)
    assert leftovers(reopened) == []
    offsets = [r[0] for r in got]
    assert offsets == sorted(set(offsets))  # no duplicates, in order
    assert set(got) <= set(original)  # nothing invented
    assert set(cleaned) <= set(got)  # every latest value (and kept tombstone) is there
    assert (reopened.log_end_offset, reopened.log_start_offset) == (leo, 0)

    # Exactly: earlier groups swapped, the crashed one all old or all new, later ones old.
    (covered_lo, covered_hi), (trailing_lo, trailing_hi) = GROUPS[group]
    committed = STEPS.index(step) >= STEPS.index("log-swap")
    trailing_gone = STEPS.index(step) >= STEPS.index("trailing-deleted")

    def part(source: list[Rec], lo: int, hi: int) -> list[Rec]:
        return [r for r in source if lo <= r[0] < hi]

    expected = (
        part(cleaned, 0, covered_lo)
        + part(cleaned if committed else original, covered_lo, covered_hi)
        + part(cleaned if trailing_gone else original, trailing_lo, trailing_hi)
        + part(original, trailing_hi, 1 << 62)
    )
    assert got == expected

    # Another pass finishes the job.
    reopened.compact(now_ms=20_000, force=True)
    assert records(reopened) == cleaned
    reopened.close()


def test_leftover_files_from_a_crash_before_the_swap_are_rolled_back(tmp_path: Path) -> None:
    log, _ = build_crash_scenario(tmp_path)
    before = records(log)
    log.close()
    directory = tmp_path / "t-0"
    # A crash while the cleaner was still writing, and one with only index swaps renamed.
    (directory / f"{0:020d}.log.cleaned").write_bytes(b"\x00" * 30)
    (directory / f"{0:020d}.index.cleaned").write_bytes(b"")
    (directory / f"{8:020d}.index.swap").write_bytes(b"\x00" * 8)
    (directory / f"{8:020d}.timeindex.swap").write_bytes(b"\x00" * 12)
    reopened = open_log(tmp_path, recover=True)
    assert leftovers(reopened) == []
    assert records(reopened) == before


def test_cleaner_state_bookkeeping() -> None:
    state = cleaner_mod.CleanerState()
    state.record_pass(10, now_ms=1_000, delete_retention_ms=500)
    state.record_pass(20, now_ms=1_200, delete_retention_ms=500)
    state.record_pass(20, now_ms=1_300, delete_retention_ms=500)  # nothing new: no entry
    assert (state.dirty_offset, state.ends, state.times) == (20, [10, 20], [1_000, 1_200])
    assert [state.first_cleaned_ms(o) for o in (0, 9, 10, 19, 20)] == [1_000] * 2 + [1_200] * 2 + [
        None
    ]
    assert state.horizon(1_499, 500) == -1
    assert state.horizon(1_500, 500) == 10
    assert state.horizon(1_700, 500) == 20
    # Entries past the horizon collapse into the newest of them.
    state.record_pass(30, now_ms=1_800, delete_retention_ms=500)
    assert (state.ends, state.times) == ([20, 30], [1_200, 1_800])
    # Truncation: offsets from the cut on will be new, dirty data.
    assert state.truncate(25)
    assert (state.dirty_offset, state.ends, state.times) == (25, [20, 25], [1_200, 1_800])
    assert state.truncate(5)
    assert (state.dirty_offset, state.ends, state.times) == (5, [5], [1_200])
    assert not state.truncate(7)


def test_truncation_marks_offsets_dirty_again(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    w = Writer(log)
    for i in range(12):
        w.put(b"k%d" % (i % 3), b"%d" % i)
    log.roll()
    log.compact(now_ms=1)
    assert log.cleaner_state.dirty_offset == 12
    assert [r[0] for r in records(log)] == [9, 10, 11]
    log.truncate_to(10)  # a follower cutting its log back to the leader's
    assert log.log_end_offset == 10
    assert log.cleaner_state.dirty_offset == 10
    assert cleaner_mod.CleanerState.load(log.directory).dirty_offset == 10
