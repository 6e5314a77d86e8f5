"""The durable side of a Raft node: its log, snapshots and quorum state in one directory.

The driver rebuilds the node from ``RaftStore.load()`` and performs every
storage action through ``apply``. The directory (``__cluster_metadata-0``, as
Kafka names it) holds:

- the log, a kops ``PartitionLog`` like any partition's (segments, indexes,
  ``leader-epoch-checkpoint``), its entries encoded by ``records``;
- snapshots, ``{end_offset:020d}-{epoch:010d}.checkpoint``: a header (magic,
  version, end offset, epoch, CRC-32C of the state) then the state bytes;
- ``quorum-state`` (``FileQuorumStateStore``).

Every open re-validates the whole log (the metadata log is small), so a torn or
corrupt tail left by a crash is cut, and the log is reconciled with the newest
valid snapshot: a log that does not continue that snapshot (a crash between
writing an installed snapshot and emptying the log) restarts at its end offset.
"""

from __future__ import annotations

import logging
import re
import struct
from pathlib import Path

import crc32c

from kops.broker.cluster.raft.actions import (
    Action,
    AppendEntries,
    InstallSnapshot,
    PersistQuorumState,
    PersistSnapshot,
    TruncateLog,
)
from kops.broker.cluster.raft.log import MemoryLog
from kops.broker.cluster.raft.messages import Entry, Snapshot
from kops.broker.cluster.raft.quorum_state import FileQuorumStateStore
from kops.broker.cluster.raft.records import entries_to_records, records_to_entries
from kops.broker.cluster.raft.state import QuorumStateData
from kops.broker.log.checkpoint import write_atomic
from kops.broker.log.config import LogConfig
from kops.broker.log.partition_log import PartitionLog

__all__ = ["RaftStore", "RaftStoreError", "snapshot_file_name"]

log = logging.getLogger(__name__)

SNAPSHOT_SUFFIX = ".checkpoint"
_SNAPSHOT_NAME = re.compile(r"^(?P<end>\d{20})-(?P<epoch>\d{10})\.checkpoint$")
_MAGIC = b"KRSN"
_VERSION = 0
# magic, version, end offset, epoch, CRC-32C of the state.
_HEADER = struct.Struct(">4sHqiI")


class RaftStoreError(Exception):
    """The directory cannot yield a consistent log (entries lost), or a call out of order."""


def snapshot_file_name(end_offset: int, epoch: int) -> str:
    return f"{end_offset:020d}-{epoch:010d}{SNAPSHOT_SUFFIX}"


def _encode_snapshot(snapshot: Snapshot) -> bytes:
    crc = crc32c.crc32c(snapshot.state)
    return _HEADER.pack(_MAGIC, _VERSION, snapshot.end_offset, snapshot.epoch, crc) + snapshot.state


def _decode_snapshot(path: Path, end_offset: int, epoch: int) -> Snapshot | None:
    """The snapshot in ``path``, or None if it is damaged or disagrees with its name."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        log.warning("cannot read snapshot %s: %s", path, exc)
        return None
    if len(raw) < _HEADER.size:
        return None
    magic, version, end, ep, crc = _HEADER.unpack_from(raw)
    state = raw[_HEADER.size :]
    if (magic, version, end, ep) != (_MAGIC, _VERSION, end_offset, epoch):
        return None
    if crc32c.crc32c(state) != crc:
        return None
    return Snapshot(end_offset, epoch, state)


class RaftStore:
    def __init__(self, directory: Path, *, segment_bytes: int = 8 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        # No retention or compaction: only snapshots shorten this log.
        self._config = LogConfig(segment_bytes=segment_bytes, retention_ms=-1, retention_bytes=-1)
        self._quorum = FileQuorumStateStore(self.directory)
        self._log: PartitionLog | None = None

    # --- opening ------------------------------------------------------------

    def load(self) -> tuple[MemoryLog, QuorumStateData | None]:
        """The newest valid snapshot and every entry after it, and the quorum state."""
        self.close()
        self.directory.mkdir(parents=True, exist_ok=True)
        snapshot = self._newest_snapshot()
        plog = PartitionLog(self.directory, self._config, recover=True, recovery_point=0)
        self._log = plog
        entries = self._reconcile(plog, snapshot)
        return MemoryLog(entries, snapshot=snapshot), self._quorum.read()

    def _newest_snapshot(self) -> Snapshot | None:
        """Newest snapshot whose CRC holds; damaged files and stray temp files are deleted."""
        found: list[tuple[int, int, Path]] = []
        for path in self.directory.iterdir():
            if path.name.endswith(SNAPSHOT_SUFFIX + ".tmp"):
                path.unlink(missing_ok=True)  # write_atomic died before its rename
                continue
            m = _SNAPSHOT_NAME.match(path.name)
            if m:
                found.append((int(m["end"]), int(m["epoch"]), path))
        for end, epoch, path in sorted(found, reverse=True):
            snapshot = _decode_snapshot(path, end, epoch)
            if snapshot is not None:
                return snapshot
            log.warning("deleting damaged snapshot %s", path)
            path.unlink(missing_ok=True)
        return None

    def _reconcile(self, plog: PartitionLog, snapshot: Snapshot | None) -> list[Entry]:
        """Make the recovered log continue ``snapshot``; returns the entries after it."""
        start = snapshot.end_offset if snapshot else 0
        epoch = snapshot.epoch if snapshot else 0
        if plog.log_start_offset > start:
            raise RaftStoreError(
                f"{self.directory}: the log starts at {plog.log_start_offset}, after the "
                f"newest valid snapshot's end {start}: entries in between are lost"
            )
        if plog.log_end_offset < start:
            self._restart_at(plog, start)
            return []
        decoded = self._entries_from(plog, max(start - 1, 0))
        before = [e for e in decoded if e.offset < start]
        entries = [e for e in decoded if e.offset >= start]
        # The entry just below the snapshot must be the one it was taken at; if the log
        # was restarted at the snapshot there is none, and then its first entry decides.
        if (before and before[-1].epoch != epoch) or (entries and entries[0].epoch < epoch):
            log.warning("%s: the log diverges from snapshot %d; restarting it", plog, start)
            self._restart_at(plog, start)
            return []
        kept = _contiguous(entries, start, epoch)
        end = kept[-1].offset + 1 if kept else start
        # A lost tail of a rolled segment leaves a gap before the next (maybe empty) one.
        if plog.log_end_offset > end:
            log.warning("%s: the log has a gap or epoch regression at %d; cutting it", plog, end)
            plog.truncate_to(end)
            plog.flush()
            if plog.log_end_offset < start:
                self._restart_at(plog, start)
                return []
        if start > plog.log_start_offset:
            # Segments wholly inside the snapshot may have survived a crash; drop them.
            plog.high_watermark = plog.log_end_offset
            plog.delete_records_before(start)
        return kept

    @staticmethod
    def _restart_at(plog: PartitionLog, offset: int) -> None:
        plog.truncate_fully_and_start_at(offset)
        plog.flush()

    @staticmethod
    def _entries_from(plog: PartitionLog, offset: int) -> list[Entry]:
        out: list[Entry] = []
        for _, raw in plog.batches(offset):
            out.extend(records_to_entries(raw))
        return out

    # --- actions ------------------------------------------------------------

    def apply(self, action: Action) -> None:
        """Perform one storage action (durably, except appends: see ``flush``)."""
        if isinstance(action, PersistQuorumState):
            self._quorum.write(action.state)
        elif isinstance(action, AppendEntries):
            self._append(action.entries)
        elif isinstance(action, TruncateLog):
            self._truncate(action.end_offset)
        elif isinstance(action, PersistSnapshot):
            self._persist_snapshot(action.snapshot)
        elif isinstance(action, InstallSnapshot):
            self._install_snapshot(action.snapshot)
        # Send, ApplyEntries and RoleChanged touch no storage.

    def _append(self, entries: tuple[Entry, ...]) -> None:
        if not entries:
            return
        plog = self._opened()
        if entries[0].offset != plog.log_end_offset:
            # append_as_follower would accept a gap; the Raft log must not have one.
            raise RaftStoreError(
                f"append at {entries[0].offset} but the log ends at {plog.log_end_offset}"
            )
        plog.append_as_follower(entries_to_records(entries))

    def _truncate(self, end_offset: int) -> None:
        plog = self._opened()
        if end_offset >= plog.log_end_offset:
            return
        # PartitionLog truncates whole batches; re-append the kept head of a cut batch.
        first = next(plog.batches(end_offset), None)
        kept = [e for e in records_to_entries(first[1] if first else None) if e.offset < end_offset]
        plog.truncate_to(end_offset)
        kept = [e for e in kept if e.offset >= plog.log_end_offset]
        if kept:
            plog.append_as_follower(entries_to_records(kept))
        plog.flush()

    def _persist_snapshot(self, snapshot: Snapshot) -> None:
        plog = self._opened()
        path = self._write_snapshot(snapshot)
        if snapshot.end_offset > plog.log_end_offset:
            self._restart_at(plog, snapshot.end_offset)  # not the core's use, but consistent
        elif snapshot.end_offset > plog.log_start_offset:
            plog.high_watermark = plog.log_end_offset
            plog.delete_records_before(snapshot.end_offset)
        self._delete_snapshots_except(path)

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        plog = self._opened()
        path = self._write_snapshot(snapshot)
        self._restart_at(plog, snapshot.end_offset)
        self._delete_snapshots_except(path)

    def _write_snapshot(self, snapshot: Snapshot) -> Path:
        path = self.directory / snapshot_file_name(snapshot.end_offset, snapshot.epoch)
        write_atomic(path, _encode_snapshot(snapshot))
        return path

    def _delete_snapshots_except(self, keep: Path) -> None:
        # Not fsynced: a file that comes back after a crash is older, and load picks the newest.
        for path in self.directory.iterdir():
            if path != keep and _SNAPSHOT_NAME.match(path.name):
                path.unlink(missing_ok=True)

    # --- durability ---------------------------------------------------------

    def flush(self) -> int:
        """fsync everything appended; returns the durable end offset."""
        plog = self._opened()
        plog.flush()
        return plog.log_end_offset

    @property
    def end_offset(self) -> int:
        return self._opened().log_end_offset

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _opened(self) -> PartitionLog:
        if self._log is None:
            raise RaftStoreError("RaftStore.load() must be called first")
        return self._log


def _contiguous(entries: list[Entry], start: int, epoch: int) -> list[Entry]:
    """The longest prefix of ``entries`` that a MemoryLog starting at ``start`` accepts."""
    expected, last = start, epoch
    for i, e in enumerate(entries):
        if e.offset != expected or e.epoch < last:
            return entries[:i]
        expected, last = expected + 1, e.epoch
    return entries
