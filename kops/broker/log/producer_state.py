"""Idempotent-producer state: per producer id, its epoch and last few batches.

Works on batch headers only. Snapshots (`<20-digit offset>.snapshot`, JSON) record
the state as of an offset, so a restart replays only the headers after it. The
state includes the partition's transactions (`txns`, see
kops.broker.log.transactions): a snapshot (version 2) records the first offset of
each ongoing transaction; a version 1 snapshot loads with none.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from kops.broker.log.checkpoint import write_atomic
from kops.broker.log.config import (
    InvalidProducerEpochError,
    InvalidTxnStateError,
    OutOfOrderSequenceError,
)
from kops.broker.log.transactions import AbortedTxn, TxnIndex, TxnState
from kops.protocol.batch import (
    CONTROL_ABORT,
    CONTROL_COMMIT,
    BatchHeader,
    InvalidBatchError,
    marker_type,
)

__all__ = ["BatchMetadata", "ProducerEntry", "ProducerStateManager"]

log = logging.getLogger(__name__)

NUM_BATCHES_TO_RETAIN = 5  # Kafka's ProducerStateEntry.NUM_BATCHES_TO_RETAIN
SEQ_MOD = 1 << 31
SNAPSHOT_SUFFIX = ".snapshot"
SNAPSHOT_VERSION = 2  # 2: + ongoing transactions
_READABLE_VERSIONS = (1, 2)


class BatchMetadata(NamedTuple):
    first_seq: int
    last_seq: int
    first_offset: int
    last_offset: int
    timestamp: int


@dataclass
class ProducerEntry:
    producer_id: int
    epoch: int
    batches: deque[BatchMetadata] = field(
        default_factory=lambda: deque(maxlen=NUM_BATCHES_TO_RETAIN)
    )
    last_timestamp: int = -1

    @property
    def last_seq(self) -> int:
        return self.batches[-1].last_seq if self.batches else -1

    def copy(self) -> ProducerEntry:
        return ProducerEntry(
            self.producer_id,
            self.epoch,
            deque(self.batches, maxlen=NUM_BATCHES_TO_RETAIN),
            self.last_timestamp,
        )

    def find_duplicate(self, first_seq: int, last_seq: int) -> BatchMetadata | None:
        for meta in self.batches:
            if meta.first_seq == first_seq and meta.last_seq == last_seq:
                return meta
        return None

    def add(self, epoch: int, meta: BatchMetadata) -> None:
        if epoch != self.epoch:
            # Sequences restart with a new epoch; old batches can't be duplicates any more.
            self.epoch = epoch
            self.batches.clear()
        self.batches.append(meta)
        self.last_timestamp = max(self.last_timestamp, meta.timestamp)


def _meta(header: BatchHeader, base_offset: int) -> BatchMetadata:
    return BatchMetadata(
        header.base_sequence,
        header.last_sequence,
        base_offset,
        base_offset + header.last_offset_delta,
        header.max_timestamp,
    )


def tracks(header: BatchHeader) -> bool:
    """Whether a batch takes part in idempotence (has a producer id and sequence, not control)."""
    return header.producer_id >= 0 and header.base_sequence >= 0 and not header.is_control


class ProducerStateManager:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.producers: dict[int, ProducerEntry] = {}
        self.txns = TxnState()

    # --- append path --------------------------------------------------------------------

    def check(
        self,
        header: BatchHeader,
        base_offset: int,
        staged: dict[int, ProducerEntry],
        timestamp: int | None = None,
        txn_starts: Iterable[tuple[int, int]] = (),
    ) -> BatchMetadata | None:
        """Validate one leader-path batch against current + staged state and stage its update.

        Returns the retained metadata when the batch is a duplicate (nothing staged).
        Raises InvalidProducerEpochError / OutOfOrderSequenceError, then
        InvalidTxnStateError for a non-transactional batch of a producer whose
        transaction is on here, or began earlier in this append (`txn_starts`:
        (producer id, first offset)), as Kafka's ProducerAppendInfo does.
        """
        pid = header.producer_id
        entry = staged.get(pid)
        if entry is None:
            current = self.producers.get(pid)
            entry = current.copy() if current is not None else None
        epoch = header.producer_epoch
        if entry is None:
            # Unknown producer (new, or its state was lost to retention/truncation): accept.
            entry = ProducerEntry(pid, epoch)
        elif epoch < entry.epoch:
            raise InvalidProducerEpochError(
                f"producer {pid} epoch {epoch} is older than current epoch {entry.epoch}"
            )
        elif epoch > entry.epoch:
            if header.base_sequence != 0:
                raise OutOfOrderSequenceError(
                    f"producer {pid} new epoch {epoch} must start at sequence 0, "
                    f"got {header.base_sequence}"
                )
        else:
            duplicate = entry.find_duplicate(header.base_sequence, header.last_sequence)
            if duplicate is not None:
                return duplicate
            last_seq = entry.last_seq
            if last_seq >= 0 and header.base_sequence != (last_seq + 1) % SEQ_MOD:
                raise OutOfOrderSequenceError(
                    f"producer {pid} epoch {epoch}: expected sequence "
                    f"{(last_seq + 1) % SEQ_MOD}, got {header.base_sequence}"
                )
        if not header.is_transactional and (
            pid in self.txns.ongoing or any(p == pid for p, _ in txn_starts)
        ):
            raise InvalidTxnStateError(
                f"expected a transactional write from producer {pid}: "
                "its transaction is on in this partition"
            )
        meta = _meta(header, base_offset)
        if timestamp is not None:
            meta = meta._replace(timestamp=timestamp)
        entry.add(epoch, meta)
        staged[pid] = entry
        return None

    def commit(self, staged: dict[int, ProducerEntry]) -> None:
        self.producers.update(staged)

    def update(self, header: BatchHeader) -> None:
        """Apply a data batch already in the log (follower appends, recovery) without
        validation; markers go to end_txn."""
        if header.is_transactional and not header.is_control and header.producer_id >= 0:
            self.txns.begin(header.producer_id, header.base_offset)
        if not tracks(header):
            return
        entry = self.producers.get(header.producer_id)
        if entry is None:
            entry = self.producers[header.producer_id] = ProducerEntry(
                header.producer_id, header.producer_epoch
            )
        elif header.producer_epoch < entry.epoch:
            return
        entry.add(header.producer_epoch, _meta(header, header.base_offset))

    def check_marker_epoch(self, producer_id: int, epoch: int) -> None:
        """A leader's marker: refused (InvalidProducerEpochError) below the producer's epoch."""
        entry = self.producers.get(producer_id)
        if entry is not None and epoch < entry.epoch:
            raise InvalidProducerEpochError(
                f"marker for producer {producer_id} has epoch {epoch}, "
                f"older than current epoch {entry.epoch}"
            )

    def apply_marker(
        self, header: BatchHeader, batch: bytes | bytearray | memoryview, txn_index: TxnIndex
    ) -> None:
        """A stored marker (follower append, recovery replay): end the producer's
        transaction, and index it in `txn_index` (the segment holding the marker's) if it
        aborted one."""
        try:
            kind = marker_type(batch)
        except InvalidBatchError as exc:
            log.warning("ignoring unreadable marker at %d: %s", header.base_offset, exc)
            return
        if kind not in (CONTROL_ABORT, CONTROL_COMMIT):
            log.warning("ignoring control record type %d at %d", kind, header.base_offset)
            return
        aborted = self.end_txn(
            header.producer_id,
            header.producer_epoch,
            header.base_offset,
            kind == CONTROL_COMMIT,
            header.max_timestamp,
        )
        if aborted is not None:
            txn_index.append(aborted)

    def end_txn(
        self, producer_id: int, epoch: int, marker_offset: int, commit: bool, timestamp: int
    ) -> AbortedTxn | None:
        """A marker in the log: a newer epoch becomes the producer's (its sequences start
        over), and its transaction here ends; returns it if it was aborted."""
        entry = self.producers.get(producer_id)
        if entry is None:
            entry = self.producers[producer_id] = ProducerEntry(producer_id, epoch)
        elif epoch > entry.epoch:
            entry.epoch = epoch
            entry.batches.clear()
        entry.last_timestamp = max(entry.last_timestamp, timestamp)
        return self.txns.complete(producer_id, marker_offset, commit)

    def expire(self, now_ms: int, max_age_ms: int) -> int:
        """Forget producers idle for longer than max_age_ms (Kafka's producer.id.expiration.ms),
        except those with a transaction on."""
        ongoing = self.txns.ongoing
        stale = [
            p
            for p, e in self.producers.items()
            if now_ms - e.last_timestamp > max_age_ms and p not in ongoing
        ]
        for pid in stale:
            del self.producers[pid]
        return len(stale)

    def clear(self) -> None:
        self.producers = {}
        self.txns.clear()

    # --- snapshots ----------------------------------------------------------------------

    def snapshot_path(self, offset: int) -> Path:
        return self.directory / f"{offset:020d}{SNAPSHOT_SUFFIX}"

    def snapshot_offsets(self) -> list[int]:
        out = []
        for path in self.directory.glob(f"*{SNAPSHOT_SUFFIX}"):
            stem = path.name[: -len(SNAPSHOT_SUFFIX)]
            if stem.isdigit():
                out.append(int(stem))
        return sorted(out)

    def take_snapshot(self, offset: int, *, fsync: bool = False) -> None:
        producers = [
            [e.producer_id, e.epoch, e.last_timestamp, [list(b) for b in e.batches]]
            for e in self.producers.values()
        ]
        txns = sorted([pid, first] for pid, first in self.txns.ongoing.items())
        doc = {
            "version": SNAPSHOT_VERSION,
            "offset": offset,
            "producers": producers,
            "txns": txns,
        }
        write_atomic(
            self.snapshot_path(offset), json.dumps(doc, separators=(",", ":")), fsync=fsync
        )

    def load_latest(self, max_offset: int) -> int | None:
        """Load the newest readable snapshot at or below max_offset; returns its offset."""
        for offset in reversed(self.snapshot_offsets()):
            if offset > max_offset:
                continue
            try:
                self._load(self.snapshot_path(offset))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable producer snapshot %s: %s", offset, exc)
                self.snapshot_path(offset).unlink(missing_ok=True)
                continue
            return offset
        self.clear()
        return None

    def _load(self, path: Path) -> None:
        doc = json.loads(path.read_text())
        if doc["version"] not in _READABLE_VERSIONS:
            raise ValueError(f"unknown snapshot version {doc['version']}")
        producers: dict[int, ProducerEntry] = {}
        for pid, epoch, last_ts, batches in doc["producers"]:
            entry = ProducerEntry(int(pid), int(epoch), last_timestamp=int(last_ts))
            entry.batches.extend(BatchMetadata(*map(int, b)) for b in batches)
            producers[entry.producer_id] = entry
        txns = TxnState()
        for pid, first in doc.get("txns", ()):
            txns.ongoing[int(pid)] = int(first)
        self.producers = producers
        self.txns = txns

    def delete_snapshots(self, offsets: Iterable[int]) -> None:
        for offset in offsets:
            self.snapshot_path(offset).unlink(missing_ok=True)

    def delete_snapshots_after(self, offset: int) -> None:
        self.delete_snapshots(o for o in self.snapshot_offsets() if o > offset)

    def delete_snapshots_before(self, offset: int) -> None:
        self.delete_snapshots(o for o in self.snapshot_offsets() if o < offset)
