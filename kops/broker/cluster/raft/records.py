"""Raft entries as Kafka record batches: the one form they take on disk and on the wire.

As in KRaft's ``__cluster_metadata``: a batch's partition leader epoch is the
entries' epoch, each record's value is an entry's payload, and a LeaderChange
entry is a control batch whose record key is (version 0, type 2). Consecutive
entries of one epoch and kind share a batch. Metadata entries are few and
small, so decoding them record by record is fine (unlike the data path).
"""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Iterator, Sequence

from kops.broker.cluster.raft.messages import Entry
from kops.protocol.batch import ATTR_CONTROL, build_batch, decode_records, iter_batches

# Kafka's ControlRecordType.LEADER_CHANGE, keyed as ControlRecordKey v0.
LEADER_CHANGE_KEY = struct.pack(">hh", 0, 2)


def _runs(entries: Sequence[Entry]) -> Iterator[Sequence[Entry]]:
    start = 0
    for i in range(1, len(entries) + 1):
        if i == len(entries) or (entries[i].epoch, entries[i].control) != (
            entries[start].epoch,
            entries[start].control,
        ):
            yield entries[start:i]
            start = i


def entries_to_records(entries: Sequence[Entry], timestamp_ms: int | None = None) -> bytes:
    """Encode consecutive entries (offsets without gaps) as record batches."""
    for prev, nxt in itertools.pairwise(entries):
        if nxt.offset != prev.offset + 1:
            raise ValueError(f"entry {nxt.offset} does not follow {prev.offset}")
    now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    out = bytearray()
    for run in _runs(entries):
        control = run[0].control
        key = LEADER_CHANGE_KEY if control else None
        out += build_batch(
            [(key, e.payload, []) for e in run],
            base_offset=run[0].offset,
            timestamp_ms=now,
            leader_epoch=run[0].epoch,
            attributes=ATTR_CONTROL if control else 0,
        )
    return bytes(out)


def records_to_entries(data: bytes | bytearray | memoryview | None) -> tuple[Entry, ...]:
    """Decode record batches back into entries (a partial batch at the end is ignored)."""
    if not data:
        return ()
    out: list[Entry] = []
    view = memoryview(data)
    for pos, header in iter_batches(view):
        for record in decode_records(view[pos : pos + header.size]):
            out.append(
                Entry(
                    record.offset,
                    header.partition_leader_epoch,
                    record.value or b"",
                    header.is_control,
                )
            )
    return tuple(out)
