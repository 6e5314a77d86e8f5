"""The record with the largest timestamp in a log: ListOffsets MAX_TIMESTAMP (KIP-734).

Kafka's answer since 3.8 (KAFKA-16310, UnifiedLog.fetchOffsetByTimestamp): the
first segment holding the largest max timestamp, in it the first batch whose max
timestamp is that one (found from the offset index entry at or before the
segment's offset of max timestamp), and in that batch the first record bearing
it. So ties go to the earliest offset, and only one batch is decoded: every
segment keeps its max timestamp and the batch that first reached it (as its
time index does), so no other batch is read.

kops also honours the log start offset, which Kafka does not here: records
below it are gone for clients (DeleteRecords), so they cannot be the answer.
Only the segment DeleteRecords cut into can hold such records; its live
maximum takes a header scan of that one segment from the log start, and a
decode of the batch straddling the log start if it could hold the maximum.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from kops.broker.log.segment import LogSegment
from kops.protocol.batch import BatchHeader, InvalidBatchError, Record, decode_records

__all__ = ["TimestampAndOffset", "batch_records", "max_timestamp_record"]

log = logging.getLogger(__name__)


class TimestampAndOffset(NamedTuple):
    offset: int
    timestamp: int


def max_timestamp_record(
    segments: Sequence[LogSegment], log_start: int, upper_bound: int | None = None
) -> TimestampAndOffset | None:
    """The first record (in offset order) with the largest timestamp at or after
    `log_start`; None for an empty log, or, with upper_bound, if that record is at
    or beyond it (Kafka filters the answer by the last fetchable offset, it does
    not look for a smaller maximum below it)."""
    best: LogSegment | None = None
    best_ts = -1
    resolved: TimestampAndOffset | None = None
    for segment in segments:
        # A segment's max timestamp bounds its live records': one not above the best
        # so far cannot win (ties go to the earlier segment).
        if segment.next_offset <= log_start or segment.max_timestamp <= best_ts:
            continue
        if segment.base_offset >= log_start:
            best, best_ts, resolved = segment, segment.max_timestamp, None
            continue
        live = _live_max(segment, log_start)
        if live is not None and live.timestamp > best_ts:
            best, best_ts, resolved = segment, live.timestamp, live
    if best is None:
        return None
    found = resolved if resolved is not None else _resolve(best, log_start)
    if found is None or (upper_bound is not None and found.offset >= upper_bound):
        return None
    return found


def _resolve(segment: LogSegment, log_start: int) -> TimestampAndOffset | None:
    """The first record bearing the segment's max timestamp, all of whose records are live."""
    target = segment.max_timestamp
    position = segment.index.lookup(segment.offset_of_max_timestamp)
    for pos, header in segment.iter_headers(position):
        if header.max_timestamp == target:
            return _first_with_max(segment, pos, header, log_start)
    # The segment's record of its max timestamp disagrees with its batches (it
    # should not): fall back to the batches themselves.
    log.warning("%s: no batch has the segment's max timestamp %d", segment.log_path, target)
    return _best_of(segment, segment.iter_headers(), log_start)


def _live_max(segment: LogSegment, log_start: int) -> TimestampAndOffset | None:
    """The segment's largest timestamp among records at or after log_start (which is
    inside this segment), by header scan from the batch holding log_start."""
    return _best_of(segment, segment.iter_headers(segment.index.lookup(log_start)), log_start)


def _best_of(
    segment: LogSegment, headers: Iterable[tuple[int, BatchHeader]], log_start: int
) -> TimestampAndOffset | None:
    best: tuple[int, BatchHeader] | None = None
    straddling: TimestampAndOffset | None = None
    best_ts = -1
    for pos, header in headers:
        if header.last_offset < log_start or header.max_timestamp <= best_ts:
            continue
        if header.base_offset >= log_start:
            best, best_ts, straddling = (pos, header), header.max_timestamp, None
            continue
        # The batch holding the log start: its max may be a deleted record's.
        found = _first_with_max(segment, pos, header, log_start)
        if found is not None and found.timestamp > best_ts:
            best, best_ts, straddling = None, found.timestamp, found
    if best is None:
        return straddling
    return _first_with_max(segment, best[0], best[1], log_start)


def batch_records(segment: LogSegment, position: int, header: BatchHeader) -> list[Record] | None:
    """The records of one stored batch, for a ListOffsets lookup; None (logged) if unreadable.

    Unreadable here means unreadable to consumers too: the caller answers
    with the batch's own first live offset and max timestamp.
    """
    try:
        return decode_records(segment.read(position, header.size))
    except InvalidBatchError as exc:
        log.warning(
            "ListOffsets: cannot decode the batch at offset %d in %s (%s); "
            "answering with its first live offset",
            header.base_offset,
            segment.log_path,
            exc.message,
        )
        return None


def _first_with_max(
    segment: LogSegment, position: int, header: BatchHeader, log_start: int
) -> TimestampAndOffset | None:
    """The batch's first record at or after log_start with the largest timestamp among them."""
    records = batch_records(segment, position, header)
    if records is None:
        return TimestampAndOffset(max(header.base_offset, log_start), header.max_timestamp)
    found: TimestampAndOffset | None = None
    for record in records:
        if record.offset >= log_start and (found is None or record.timestamp > found.timestamp):
            found = TimestampAndOffset(record.offset, record.timestamp)
    return found
