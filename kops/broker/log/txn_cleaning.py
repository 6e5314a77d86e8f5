"""What compaction does with transactions (Kafka's LogCleaner and its
CleanedTransactionMetadata, KIP-98; the marker's delete horizon of KIP-534).

Only offsets below the last stable offset are cleaned, so every transaction a
pass meets is decided: its batches either committed or aborted.

Data
    The batches of an aborted transaction (a producer's transactional batches
    between the first offset and the ABORT marker of an entry of the aborted-
    transaction indexes) lose all their records, and their keys never enter the
    offset map: aborted records survive compaction for no reader. A committed
    transaction's records are compacted by key like any others.

Markers
    A marker stays as it is while a batch of the transaction it ends is left. The
    pass that leaves none stamps it with a delete horizon (now + delete.retention.ms:
    attribute bit 6 set, the horizon as base timestamp, the control record's
    timestamp delta re-encoded so the record keeps its time), and the first pass at
    or after the horizon removes it (the horizon makes a pass due, as a tombstone's
    does). So a reader that saw a transaction's data sees its marker for at least
    delete.retention.ms after the data went. Kafka stamps the marker one pass later
    (the first one that finds no batch of its transaction); the horizon is the
    same guarantee.

The aborted-transaction index
    A cleaned segment keeps the entries of the aborted transactions the pass left
    a batch of (an empty producer's last one, say): an entry whose data is gone has
    nothing to filter, and a replay of the cleaned log (which indexes a transaction
    from its first batch, and a marker that ends none not at all) has none either,
    so a segment rebuilt after a crash indexes what the pass wrote. Kafka keeps the
    entry for the pass that removes the data. The entries of segments the pass does
    not write (markers beyond the cleaned range) stay as they are.

The last batch of a producer
    So that producer state rebuilt by replaying the log stays right (idempotent
    sequences, epochs), the batch holding an active producer's last data offset is
    never dropped: if all its records go it stays as an empty batch (header only:
    same offsets, producer id, epoch and sequences). A producer whose last batch is
    a marker (its epoch was bumped by an abort) keeps that marker whole. Kafka
    keeps such a marker as an empty batch; kops keeps the record, which a replay
    needs to end a transaction and which costs a few bytes.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from kops.broker.log.transactions import AbortedTxn, is_marker
from kops.protocol.batch import (
    BatchHeader,
    iter_raw_records,
    read_varint,
    rebuild_batch,
    records_body,
    write_varint,
)

if TYPE_CHECKING:
    from kops.broker.log.producer_state import ProducerEntry
    from kops.broker.log.segment import LogSegment

__all__ = [
    "ATTR_DELETE_HORIZON",
    "ProducerTail",
    "TxnCleaning",
    "delete_horizon",
    "empty_batch",
    "with_delete_horizon",
]

# Record batch attribute bit 6 (KIP-534): the base timestamp is the delete horizon.
ATTR_DELETE_HORIZON = 0x40


class ProducerTail(NamedTuple):
    """What the cleaner must keep of an active producer: the batch with its last data
    offset, or (none) its last marker, of that epoch."""

    last_data_offset: int | None
    epoch: int


def delete_horizon(header: BatchHeader) -> int | None:
    """The batch's delete horizon (ms), if a cleaner stamped one."""
    return header.base_timestamp if header.attributes & ATTR_DELETE_HORIZON else None


def with_delete_horizon(header: BatchHeader, raw: bytes, horizon_ms: int) -> bytes:
    """The batch stamped with `horizon_ms`, its records' timestamps unchanged (their
    deltas are re-encoded from the new base timestamp); uncompressed, as a marker is."""
    _, body = records_body(raw)
    out = bytearray()
    for rec in iter_raw_records(body, header.records_count):
        _, pos = read_varint(body, rec.start)  # the record's length
        attributes = body[pos]
        _, after = read_varint(body, pos + 1)  # the old timestamp delta
        record = bytearray((attributes,))
        write_varint(record, header.base_timestamp + rec.timestamp_delta - horizon_ms)
        record += body[after : rec.end]
        write_varint(out, len(record))
        out += record
    stamped = header._replace(
        attributes=header.attributes | ATTR_DELETE_HORIZON, base_timestamp=horizon_ms
    )
    return rebuild_batch(stamped, out, header.records_count, header.max_timestamp)


def empty_batch(header: BatchHeader) -> bytes:
    """The batch without its records: the same offsets, producer fields and max timestamp."""
    return rebuild_batch(header, b"", 0, header.max_timestamp)


class TxnCleaning:
    """One pass's view of the transactions it cleans. `data` and `marker` must see the
    cleaned batches in offset order, each once; `is_aborted` may be asked any time."""

    def __init__(
        self,
        aborted: Iterable[AbortedTxn] = (),
        tails: Mapping[int, ProducerTail] | None = None,
    ) -> None:
        # producer id -> its aborted transactions' (first offsets, marker offsets), sorted.
        spans: dict[int, list[tuple[int, int]]] = {}
        for entry in aborted:
            spans.setdefault(entry.producer_id, []).append((entry.first_offset, entry.last_offset))
        self._firsts: dict[int, list[int]] = {}
        self._lasts: dict[int, list[int]] = {}
        for producer_id, found in spans.items():
            found.sort()
            self._firsts[producer_id] = [first for first, _ in found]
            self._lasts[producer_id] = [last for _, last in found]
        self.tails: Mapping[int, ProducerTail] = tails or {}
        self._written: set[int] = set()  # producers with a batch written since their marker
        self.indexed: set[int] = set()  # offsets of the markers whose index entry stays
        self.due: int | None = None  # the earliest delete horizon of a marker kept
        self.markers_removed = 0

    @classmethod
    def plan(
        cls, segments: Sequence[LogSegment], cleanable: int, producers: Mapping[int, ProducerEntry]
    ) -> TxnCleaning:
        """For a pass over segments[:cleanable] (event loop): the aborted transactions
        starting there, wherever their marker is, and the producers' last batches."""
        end = segments[cleanable].base_offset if cleanable < len(segments) else None
        aborted = [
            entry
            for segment in segments
            for entry in segment.txn_index.entries
            if end is None or entry.first_offset < end
        ]
        tails = {
            pid: ProducerTail(e.batches[-1].last_offset if e.batches else None, e.epoch)
            for pid, e in producers.items()
        }
        return cls(aborted, tails)

    def is_aborted(self, header: BatchHeader) -> bool:
        """Whether a data batch belongs to an aborted transaction."""
        if not header.is_transactional or header.is_control:
            return False
        firsts = self._firsts.get(header.producer_id)
        if firsts is None:
            return False
        i = bisect_right(firsts, header.base_offset) - 1
        return i >= 0 and header.base_offset <= self._lasts[header.producer_id][i]

    def is_producer_tail(self, header: BatchHeader) -> bool:
        """Whether the batch is what replay needs of an active producer's state."""
        tail = self.tails.get(header.producer_id)
        if tail is None or header.producer_id < 0:
            return False
        if tail.last_data_offset is None:
            return header.is_control and header.producer_epoch == tail.epoch
        return not header.is_control and header.last_offset == tail.last_data_offset

    def written(self, header: BatchHeader) -> None:
        """A transactional data batch the pass writes back (with records, or empty)."""
        self._written.add(header.producer_id)

    def marker(
        self, header: BatchHeader, raw: bytes, now_ms: int, retention_ms: int
    ) -> bytes | None:
        """A control batch read by the pass: as it should be written, None to remove it."""
        if not is_marker(header):
            return raw  # not a transaction's
        producer_id = header.producer_id
        if producer_id in self._written:
            self._written.discard(producer_id)
            self.indexed.add(header.base_offset)
            return raw
        horizon = delete_horizon(header)
        if horizon is None:
            horizon = now_ms + retention_ms
            raw = with_delete_horizon(header, raw, horizon)
        if horizon > now_ms or self.is_producer_tail(header):
            if horizon > now_ms and (self.due is None or horizon < self.due):
                self.due = horizon
            return raw
        self.markers_removed += 1
        return None

    def kept_entries(self, entries: Iterable[AbortedTxn]) -> list[AbortedTxn]:
        """The txnindex entries (of a cleaned group) of the transactions the pass left a
        batch of: an entry with no batch left has nothing to filter, and a replay of the
        cleaned log (which indexes a transaction from its first batch) has none either."""
        return [entry for entry in entries if entry.last_offset in self.indexed]
