"""Transactions in the log (KIP-98): markers, the last stable offset, aborted-txn indexes.

A producer's batches with the transactional attribute belong to its *ongoing
transaction* in this partition, from the base offset of the first such batch
after its previous marker. A *control batch* (transactional + control, one
record) ends it: COMMIT or ABORT. The coordinator's WriteTxnMarkers has the
leader write it (`PartitionLog.append_marker`); followers copy it like any batch.

What the log keeps
    `TxnState` (owned by the ProducerStateManager, snapshotted with it): the first
    offset of each producer's ongoing transaction, and the transactions completed
    by a marker the high watermark has not passed yet. The last stable offset is
    the smallest of the high watermark and their first offsets.

    `TxnIndex`, one per segment (`<base>.txnindex`, Kafka's format: 34-byte
    big-endian entries of int16 version 0, int64 producer id, first offset, last
    offset (the ABORT marker's) and the last stable offset when it was written),
    lists the aborted transactions whose marker that segment holds, in marker
    order. A read_committed Fetch answers those overlapping what it returns.
    Entries are kept in memory once read: aborts are rare.

    The stored last stable offset is Kafka's: the first offset of the earliest
    *other* ongoing transaction, else the marker offset + 1. It depends on the
    log only (not on the high watermark), so a leader, its followers and a
    rebuild by recovery all write the same entry. It lets a search stop: no
    transaction aborted later can start before it.

Rebuilds
    Appending an entry is idempotent (one whose marker is not past the index's last
    entry is skipped), so replaying batch headers over segments whose index is
    intact adds nothing; a segment whose indexes are rebuilt (`LogSegment.recover`)
    clears its txnindex and the replay that follows (kops.broker.log.recovery)
    refills it. Only control batches are decoded, and only their single record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from kops.protocol.batch import (
    MARKER_ATTRIBUTES,
    BatchHeader,
)

__all__ = [
    "TXN_INDEX_SUFFIX",
    "AbortedTxn",
    "TxnIndex",
    "TxnState",
    "collect_aborted",
    "is_marker",
    "write_txn_index",
]

log = logging.getLogger(__name__)

TXN_INDEX_SUFFIX = ".txnindex"

_ENTRY = struct.Struct(">hqqqq")  # version, producer id, first, last, last stable offset


class AbortedTxn(NamedTuple):
    producer_id: int
    first_offset: int
    last_offset: int  # the ABORT marker's offset
    last_stable_offset: int  # see the module docstring


# --- control batches ------------------------------------------------------------------------


def is_marker(header: BatchHeader) -> bool:
    """A transaction marker: a transactional control batch of a producer (KRaft's own
    control batches are not transactional)."""
    return header.attributes & MARKER_ATTRIBUTES == MARKER_ATTRIBUTES and header.producer_id >= 0


# --- the state of a partition's transactions ------------------------------------------------


class TxnState:
    """Ongoing transactions (producer id -> first offset) and completed ones whose
    marker the high watermark has not passed yet ((first offset, marker offset),
    in marker order)."""

    def __init__(self) -> None:
        self.ongoing: dict[int, int] = {}
        self.unreplicated: deque[tuple[int, int]] = deque()

    def begin(self, producer_id: int, offset: int) -> None:
        """A transactional data batch at `offset`: starts a transaction unless one is on."""
        self.ongoing.setdefault(producer_id, offset)

    def complete(self, producer_id: int, marker_offset: int, commit: bool) -> AbortedTxn | None:
        """A marker at `marker_offset`: the aborted transaction to index, if it aborted one."""
        first = self.ongoing.pop(producer_id, None)
        if first is None:
            return None  # a marker that ends nothing here (Kafka writes it all the same)
        self.unreplicated.append((first, marker_offset))
        if commit:
            return None
        stable = min(self.ongoing.values(), default=marker_offset + 1)
        return AbortedTxn(producer_id, first, marker_offset, stable)

    def first_unstable_offset(self, high_watermark: int) -> int | None:
        """The first offset of the earliest transaction still undecided at `high_watermark`."""
        unreplicated = self.unreplicated
        while unreplicated and unreplicated[0][1] < high_watermark:
            unreplicated.popleft()
        first = min(self.ongoing.values(), default=None)
        for start, _ in unreplicated:
            if first is None or start < first:
                first = start
        return first

    def clear(self) -> None:
        self.ongoing = {}
        self.unreplicated.clear()


def collect_aborted(
    indexes: Iterable[TxnIndex], fetch_offset: int, upper_bound: int
) -> list[tuple[int, int]]:
    """(producer id, first offset) of the aborted transactions with a marker at or after
    fetch_offset that start before upper_bound, from the indexes of the segments holding
    fetch_offset and after, in order (Kafka's collectAbortedTransactions)."""
    out: list[tuple[int, int]] = []
    for index in indexes:
        entries = index.entries
        if not entries:
            continue
        for i in range(bisect_left(entries, fetch_offset, key=_last_offset), len(entries)):
            entry = entries[i]
            if entry.first_offset < upper_bound:
                out.append((entry.producer_id, entry.first_offset))
            if entry.last_stable_offset >= upper_bound:
                return out  # nothing aborted later started before the bound
    return out


def _last_offset(entry: AbortedTxn) -> int:
    return entry.last_offset


# --- the .txnindex file ---------------------------------------------------------------------


def _encode(entries: Iterable[AbortedTxn]) -> bytes:
    return b"".join(_ENTRY.pack(0, *entry) for entry in entries)


def write_txn_index(path: Path, entries: Iterable[AbortedTxn]) -> None:
    """Write a whole index file and fsync it (the cleaner's output)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, _encode(entries))
        os.fsync(fd)
    finally:
        os.close(fd)


class TxnIndex:
    """The aborted transactions indexed in one segment; the file exists only once it has
    an entry. Entries are read on first use and then kept in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: list[AbortedTxn] | None = None
        self._fd: int | None = None
        self._dirty = False  # written since the last fsync

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def entries(self) -> list[AbortedTxn]:
        if self._entries is None:
            self._entries = self._load()
        return self._entries

    def _load(self) -> list[AbortedTxn]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        entries: list[AbortedTxn] = []
        end = len(data) - len(data) % _ENTRY.size
        for pos in range(0, end, _ENTRY.size):
            version, *fields = _ENTRY.unpack_from(data, pos)
            if version != 0:
                log.warning("%s: unknown entry version %d; ignoring the rest", self.path, version)
                break
            entry = AbortedTxn(*fields)
            if entries and entry.last_offset <= entries[-1].last_offset:
                log.warning("%s: entries out of order; ignoring the rest", self.path)
                break
            entries.append(entry)
        if len(entries) * _ENTRY.size != len(data):
            # A torn append or garbage: later appends must land on an entry boundary.
            self._truncate_file(len(entries))
        return entries

    def _writer(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return self._fd

    def append(self, entry: AbortedTxn) -> bool:
        """Add an entry unless its marker is not past the last one (a replay); True if added."""
        entries = self.entries
        if entries and entry.last_offset <= entries[-1].last_offset:
            return False
        os.write(self._writer(), _ENTRY.pack(0, *entry))
        entries.append(entry)
        self._dirty = True
        return True

    def truncate_to(self, offset: int) -> None:
        """Drop the entries whose marker is at or after `offset` (the log was cut there)."""
        entries = self.entries
        n = bisect_left(entries, offset, key=_last_offset)
        if n < len(entries):
            del entries[n:]
            self._truncate_file(n)

    def _truncate_file(self, n: int) -> None:
        if n == 0:
            self.close()
            self.path.unlink(missing_ok=True)
            self._dirty = False
            return
        os.ftruncate(self._writer(), n * _ENTRY.size)
        self._dirty = True

    def clear(self) -> None:
        """Forget every entry (the segment is rebuilt or recreated)."""
        self.close()
        self.path.unlink(missing_ok=True)
        self._entries = []
        self._dirty = False

    def flush(self) -> None:
        if not self._dirty:
            return
        if self._fd is not None:
            os.fsync(self._fd)
        else:
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        self._dirty = False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def delete(self) -> None:
        self.clear()
