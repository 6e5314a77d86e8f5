"""RaftStore: the Raft log, snapshots and quorum state on real files, across crashes."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from kops.broker.cluster.raft.actions import (
    AppendEntries,
    ApplyEntries,
    InstallSnapshot,
    PersistQuorumState,
    PersistSnapshot,
    RoleChanged,
    TruncateLog,
)
from kops.broker.cluster.raft.log import MemoryLog
from kops.broker.cluster.raft.messages import Entry, Snapshot
from kops.broker.cluster.raft.records import entries_to_records
from kops.broker.cluster.raft.state import QuorumStateData, Role
from kops.broker.cluster.raft.store import RaftStore, RaftStoreError, snapshot_file_name
from kops.broker.cluster.voters import METADATA_LOG_DIR
from kops.broker.log.config import LogConfig
from kops.broker.log.manager import LogManager

SMALL_SEGMENTS = 600  # a few batches per segment, so rolls and segment deletion happen


def run(start: int, *epochs: int, control_at: tuple[int, ...] = ()) -> tuple[Entry, ...]:
    return tuple(
        Entry(start + i, epoch, b"v%d" % (start + i), (start + i) in control_at)
        for i, epoch in enumerate(epochs)
    )


def opened(directory: Path, segment_bytes: int = SMALL_SEGMENTS) -> tuple[RaftStore, MemoryLog]:
    store = RaftStore(directory, segment_bytes=segment_bytes)
    mlog, _ = store.load()
    return store, mlog


def crash(store: RaftStore) -> None:
    """The process dies: the OS closes its files, nothing is flushed or snapshotted."""
    plog = store._log
    assert plog is not None
    plog.close_handles()


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def same(a: MemoryLog, b: MemoryLog) -> None:
    assert a.snapshot == b.snapshot
    assert a.start_offset == b.start_offset
    assert a.entries() == b.entries()


def test_fresh_directory_loads_empty(tmp_path: Path) -> None:
    store = RaftStore(tmp_path / METADATA_LOG_DIR)
    mlog, qs = store.load()
    assert (mlog.start_offset, mlog.end_offset, mlog.snapshot, qs) == (0, 0, None, None)
    assert store.end_offset == 0
    store.close()


def test_append_flush_reopen_round_trips_log_and_quorum_state(tmp_path: Path) -> None:
    store, _ = opened(tmp_path)
    entries = run(0, 1, 1, 2, 2, 2, 3, control_at=(0, 2, 5))
    qs = QuorumStateData(leader_epoch=3, leader_id=2, voted_id=2)
    store.apply(PersistQuorumState(qs))
    store.apply(AppendEntries(entries[:4]))
    store.apply(AppendEntries(entries[4:]))
    assert store.flush() == 6 == store.end_offset
    store.close()

    store = RaftStore(tmp_path, segment_bytes=SMALL_SEGMENTS)
    mlog, loaded_qs = store.load()
    assert mlog.entries() == list(entries)
    assert [e.control for e in mlog.entries()] == [True, False, True, False, False, True]
    assert mlog.end_offset_for_epoch(2) is not None
    assert mlog.end_offset_for_epoch(2).offset == 5  # type: ignore[union-attr]
    assert loaded_qs == qs
    store.close()


def test_non_storage_actions_are_ignored_and_gaps_refused(tmp_path: Path) -> None:
    store, _ = opened(tmp_path)
    store.apply(AppendEntries(run(0, 1, 1)))
    store.apply(ApplyEntries(run(0, 1), high_watermark=1))
    store.apply(RoleChanged(Role.LEADER, 1, 1))
    assert store.end_offset == 2
    with pytest.raises(RaftStoreError):
        store.apply(AppendEntries(run(5, 1)))
    with pytest.raises(RaftStoreError):
        RaftStore(tmp_path / "other").flush()
    store.close()


def test_crash_keeps_everything_flushed(tmp_path: Path) -> None:
    store, _ = opened(tmp_path)
    flushed = run(0, 1, 1, 1, 2)
    store.apply(AppendEntries(flushed))
    store.flush()
    sizes = {p: p.stat().st_size for p in segment_files(tmp_path)}
    store.apply(AppendEntries(run(4, 2, 2, 3)))
    crash(store)

    # The page cache survived this "crash": the unflushed tail may come back...
    store, mlog = opened(tmp_path)
    assert mlog.entries()[:4] == list(flushed)
    assert mlog.entries() == list(flushed + run(4, 2, 2, 3))
    crash(store)

    # ...or be lost: cut the files back to what was fsynced.
    for path in segment_files(tmp_path):
        os.truncate(path, sizes.get(path, 0))
    store, mlog = opened(tmp_path)
    assert mlog.entries() == list(flushed)
    store.close()


def test_torn_half_batch_is_cut_and_appends_continue(tmp_path: Path) -> None:
    store, _ = opened(tmp_path, segment_bytes=1 << 20)
    store.apply(AppendEntries(run(0, 1, 1, 2)))
    store.flush()
    crash(store)
    torn = entries_to_records(run(3, 2, 2, 2))
    (segment,) = segment_files(tmp_path)
    with segment.open("ab") as f:
        f.write(torn[: len(torn) // 2])

    store, mlog = opened(tmp_path, segment_bytes=1 << 20)
    assert mlog.entries() == list(run(0, 1, 1, 2))
    assert store.end_offset == 3
    store.apply(AppendEntries(run(3, 4)))
    store.flush()
    crash(store)
    _, mlog = opened(tmp_path, segment_bytes=1 << 20)
    assert mlog.entries() == list(run(0, 1, 1, 2, 4))


def test_corrupt_batch_crc_is_cut(tmp_path: Path) -> None:
    store, _ = opened(tmp_path, segment_bytes=1 << 20)
    store.apply(AppendEntries(run(0, 1, 1)))
    store.apply(AppendEntries(run(2, 2, 2)))  # its own batch (new epoch)
    store.flush()
    crash(store)
    (segment,) = segment_files(tmp_path)
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF  # inside the last batch's records
    segment.write_bytes(bytes(data))

    store, mlog = opened(tmp_path, segment_bytes=1 << 20)
    assert mlog.entries() == list(run(0, 1, 1))
    store.close()


def test_gap_left_by_a_lost_rolled_segment_is_cut(tmp_path: Path) -> None:
    store, _ = opened(tmp_path)
    store.apply(AppendEntries(run(0, 1, 1)))
    store.flush()
    for i in range(2, 40, 2):
        store.apply(AppendEntries(tuple(Entry(o, 1, b"g" * 40) for o in (i, i + 1))))
    crash(store)
    files = segment_files(tmp_path)
    assert len(files) >= 3
    # The second segment's data never reached the disk; the third's did.
    os.truncate(files[1], 0)
    lost_from = int(files[1].name.split(".")[0])

    store, mlog = opened(tmp_path)
    assert mlog.end_offset == lost_from
    assert [e.offset for e in mlog.entries()] == list(range(lost_from))
    store.apply(AppendEntries(run(lost_from, 2)))
    store.close()
    _, mlog = opened(tmp_path)
    assert mlog.end_offset == lost_from + 1


def test_truncation_survives_reopen_even_inside_a_batch(tmp_path: Path) -> None:
    store, _ = opened(tmp_path)
    store.apply(AppendEntries(run(0, 1, 1, 1, 1, 1, 1)))  # one batch
    store.apply(AppendEntries(run(6, 2, 2)))
    store.flush()
    store.apply(TruncateLog(4))
    assert store.end_offset == 4
    crash(store)  # durable before returning: no flush needed

    store, mlog = opened(tmp_path)
    assert mlog.entries() == list(run(0, 1, 1, 1, 1))
    store.apply(AppendEntries(run(4, 3, 3)))
    store.flush()
    store.close()
    _, mlog = opened(tmp_path)
    assert mlog.entries() == list(run(0, 1, 1, 1, 1, 3, 3))


def test_persist_snapshot_drops_old_segments_and_snapshots(tmp_path: Path) -> None:
    store, _ = opened(tmp_path)
    entries = tuple(Entry(i, 1 + i // 10, b"p" * 40) for i in range(60))
    for i in range(0, 60, 3):
        store.apply(AppendEntries(entries[i : i + 3]))
    store.flush()
    segments_before = segment_files(tmp_path)
    assert len(segments_before) > 3

    first = Snapshot(10, 1, b"state@10")
    store.apply(PersistSnapshot(first))
    second = Snapshot(41, 5, b"state@41")
    store.apply(PersistSnapshot(second))
    assert [p.name for p in tmp_path.glob("*.checkpoint")] == [snapshot_file_name(41, 5)]
    remaining = segment_files(tmp_path)
    assert len(remaining) < len(segments_before)
    bases = [int(p.name.split(".")[0]) for p in remaining]
    assert bases[0] <= 41 < (bases[1] if len(bases) > 1 else 60)
    crash(store)

    store, mlog = opened(tmp_path)
    assert mlog.snapshot == second
    assert (mlog.start_offset, mlog.start_epoch) == (41, 5)
    assert mlog.entries() == list(entries[41:])
    store.apply(AppendEntries((Entry(60, 7, b"after"),)))
    store.flush()
    store.close()
    _, mlog = opened(tmp_path)
    assert mlog.entries() == [*entries[41:], Entry(60, 7, b"after")]


def test_corrupt_newest_snapshot_falls_back_to_the_previous(tmp_path: Path) -> None:
    store, _ = opened(tmp_path)
    store.apply(AppendEntries(run(0, 1, 1, 1, 2, 2, 2, 2)))
    store.flush()
    good = Snapshot(3, 1, b"good")
    store.apply(PersistSnapshot(good))
    store.close()
    # A newer snapshot whose header disagrees with its name, and a write never renamed.
    bad = tmp_path / snapshot_file_name(6, 2)
    bad.write_bytes((tmp_path / snapshot_file_name(3, 1)).read_bytes())
    stray = tmp_path / (snapshot_file_name(7, 2) + ".tmp")
    stray.write_bytes(b"partial")

    store, mlog = opened(tmp_path)
    assert mlog.snapshot == good
    assert mlog.entries() == list(run(3, 2, 2, 2, 2))
    assert not bad.exists()
    assert not stray.exists()
    store.close()


def test_snapshot_with_bad_crc_only_is_skipped(tmp_path: Path) -> None:
    store, _ = opened(tmp_path)
    store.apply(AppendEntries(run(0, 1, 1, 1, 1)))
    store.flush()
    store.apply(PersistSnapshot(Snapshot(2, 1, b"older")))
    store.close()
    # A newer snapshot as the store writes it (as if a crash came before the older one
    # was deleted), then one bit of its state flips on disk.
    newer = tmp_path / snapshot_file_name(4, 1)
    store, _ = opened(tmp_path)
    store._write_snapshot(Snapshot(4, 1, b"newer"))
    store.close()
    data = bytearray(newer.read_bytes())
    data[-1] ^= 0x01
    newer.write_bytes(bytes(data))

    store, mlog = opened(tmp_path)
    assert mlog.snapshot == Snapshot(2, 1, b"older")
    assert mlog.entries() == list(run(2, 1, 1))
    assert not newer.exists()
    store.close()


def test_install_snapshot_restarts_the_log_at_its_end(tmp_path: Path) -> None:
    store, _ = opened(tmp_path)
    store.apply(AppendEntries(run(0, 1, 1, 1, 1, 1)))
    store.flush()
    store.apply(PersistSnapshot(Snapshot(2, 1, b"local")))
    leader = Snapshot(20, 4, b"leader state")
    store.apply(InstallSnapshot(leader))
    assert store.end_offset == 20
    assert [p.name for p in tmp_path.glob("*.checkpoint")] == [snapshot_file_name(20, 4)]
    crash(store)

    store, mlog = opened(tmp_path)
    assert (mlog.snapshot, mlog.start_offset, mlog.end_offset) == (leader, 20, 20)
    store.apply(AppendEntries(run(20, 4, 5)))
    assert store.flush() == 22
    store.close()
    _, mlog = opened(tmp_path)
    assert mlog.snapshot == leader
    assert mlog.entries() == list(run(20, 4, 5))


def test_install_snapshot_below_the_log_end_drops_the_diverging_tail(tmp_path: Path) -> None:
    store, _ = opened(tmp_path)
    store.apply(AppendEntries(run(0, 1, 1, 2, 2, 2, 2)))
    store.flush()
    store.apply(InstallSnapshot(Snapshot(3, 3, b"s")))
    store.apply(AppendEntries(run(3, 3)))
    store.flush()
    store.close()
    _, mlog = opened(tmp_path)
    assert (mlog.start_offset, mlog.entries()) == (3, list(run(3, 3)))


def test_crash_between_installed_snapshot_and_log_reset(tmp_path: Path) -> None:
    """The snapshot file is durable but the old, diverging log is still there."""
    store, _ = opened(tmp_path)
    store.apply(AppendEntries(run(0, 1, 1, 2, 2, 2, 2)))
    store.flush()
    store._write_snapshot(Snapshot(4, 3, b"leader"))  # epoch 3 at offset 3: not this log
    crash(store)

    store, mlog = opened(tmp_path)
    assert (mlog.snapshot, mlog.start_offset, mlog.end_offset) == (Snapshot(4, 3, b"leader"), 4, 4)
    assert store.end_offset == 4
    store.close()


def test_lost_segments_below_a_fallback_snapshot_are_an_error(tmp_path: Path) -> None:
    store, _ = opened(tmp_path)
    for i in range(0, 30, 3):
        store.apply(AppendEntries(tuple(Entry(o, 1, b"q" * 40) for o in range(i, i + 3))))
    store.flush()
    store.apply(PersistSnapshot(Snapshot(27, 1, b"s")))
    store.close()
    (tmp_path / snapshot_file_name(27, 1)).write_bytes(b"rotten")
    with pytest.raises(RaftStoreError, match="lost"):
        RaftStore(tmp_path, segment_bytes=SMALL_SEGMENTS).load()


def test_log_manager_leaves_the_metadata_log_alone(tmp_path: Path) -> None:
    store = RaftStore(tmp_path / METADATA_LOG_DIR)
    store.load()
    store.apply(AppendEntries(run(0, 1)))
    store.flush()
    crash(store)  # an unclean stop: the metadata log must not turn the broker's start unclean

    manager = LogManager(tmp_path)
    assert manager.existing_partitions() == []
    assert manager.clean_shutdown
    manager.open_partition("orders", 0, LogConfig())
    manager.close()
    assert LogManager(tmp_path).existing_partitions() == [("orders", 0)]
    _, mlog = opened(tmp_path / METADATA_LOG_DIR)
    assert mlog.entries() == list(run(0, 1))


# --- randomized ---------------------------------------------------------------


class Sim:
    """Drives a store and a MemoryLog model through the same actions, with crashes.

    A crash keeps a random prefix of whatever was written to each segment file
    after it was last fsynced (page cache lost part-way), sometimes plus garbage.
    """

    def __init__(self, directory: Path, rng: random.Random) -> None:
        self.directory = directory
        self.rng = rng
        self.store, self.model = opened(directory)
        self.qs: QuorumStateData | None = None
        self.flushed = 0  # the store promised entries below this survive
        self.durable: dict[str, int] = {}
        self.reopens = 0

    def mark_durable(self) -> None:
        self.durable = {p.name: p.stat().st_size for p in segment_files(self.directory)}

    def append(self) -> None:
        rng, model = self.rng, self.model
        epoch = model.last_epoch + (rng.random() < 0.2)
        entries = []
        for i in range(rng.randint(1, 6)):
            if rng.random() < 0.15:
                epoch += 1
            payload = rng.randbytes(rng.randint(0, 40))
            entries.append(Entry(model.end_offset + i, epoch, payload, rng.random() < 0.1))
        model.append(entries)
        self.store.apply(AppendEntries(tuple(entries)))

    def flush(self) -> None:
        self.flushed = self.store.flush()
        assert self.flushed == self.model.end_offset
        self.mark_durable()

    def truncate(self) -> None:
        model = self.model
        target = self.rng.randint(model.start_offset, model.end_offset)
        if target < model.end_offset:
            model.truncate(target)
            self.store.apply(TruncateLog(target))
            self.flushed = min(self.flushed, target)
            self.mark_durable()
        assert self.store.end_offset == model.end_offset

    def persist_snapshot(self) -> None:
        model = self.model
        if model.end_offset == model.start_offset:
            return
        end = self.rng.randint(model.start_offset + 1, model.end_offset)
        snapshot = Snapshot(end, model.epoch_at(end), self.rng.randbytes(16))
        model.drop_prefix(snapshot)
        self.store.apply(PersistSnapshot(snapshot))
        self.flushed = max(self.flushed, end)

    def install_snapshot(self) -> None:
        model = self.model
        end = self.rng.randint(model.start_offset, model.end_offset + 5)
        snapshot = Snapshot(end, model.last_epoch + self.rng.randint(0, 2), self.rng.randbytes(8))
        model.reset_to_snapshot(snapshot)
        self.store.apply(InstallSnapshot(snapshot))
        self.flushed = end
        self.mark_durable()
        assert self.store.end_offset == end

    def vote(self) -> None:
        epoch = (self.qs.leader_epoch if self.qs else 0) + 1
        self.qs = QuorumStateData(epoch, voted_id=self.rng.choice([None, 1, 2, 3]))
        self.store.apply(PersistQuorumState(self.qs))

    def crash(self) -> None:
        crash(self.store)
        rng = self.rng
        for path in segment_files(self.directory):
            size = path.stat().st_size
            durable = min(self.durable.get(path.name, 0), size)
            # Half the time exactly what was synced: a batch boundary, so a rolled segment's
            # lost tail can leave a gap before the next segment instead of a torn batch.
            keep = durable if rng.random() < 0.5 else rng.randint(durable, size)
            os.truncate(path, keep)
        files = segment_files(self.directory)
        if files and rng.random() < 0.3:
            with files[-1].open("ab") as f:
                f.write(rng.randbytes(rng.randint(1, 80)))
        self.reopen(clean=False)

    def reopen(self, *, clean: bool) -> None:
        if clean:
            self.store.close()
        self.reopens += 1
        self.store = RaftStore(self.directory, segment_bytes=SMALL_SEGMENTS)
        loaded, qs = self.store.load()
        assert qs == self.qs
        model = self.model
        assert loaded.snapshot == model.snapshot
        assert loaded.start_offset == model.start_offset
        assert self.flushed <= loaded.end_offset <= model.end_offset
        if clean:
            assert loaded.end_offset == model.end_offset
        assert loaded.entries() == model.read(model.start_offset, loaded.end_offset)
        assert self.store.end_offset == loaded.end_offset
        model.truncate(loaded.end_offset)
        self.flushed = loaded.end_offset  # an open syncs what it recovered
        self.mark_durable()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_randomized_against_memory_log(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    sim = Sim(tmp_path, rng)
    steps = [
        (sim.append, 10),
        (sim.flush, 4),
        (sim.truncate, 2),
        (sim.persist_snapshot, 1),
        (sim.install_snapshot, 0.4),
        (sim.vote, 1),
        (sim.crash, 1.5),
        (lambda: sim.reopen(clean=True), 0.5),
    ]
    actions, weights = zip(*steps, strict=True)
    for _ in range(300):
        rng.choices(actions, weights)[0]()
    sim.reopen(clean=True)
    assert sim.reopens > 10
    assert sim.model.end_offset > sim.model.start_offset or sim.model.snapshot is not None
    sim.store.close()
