"""One log segment: a `.log` file of raw batches plus its offset, time and
aborted-transaction indexes (the last: kops.broker.log.transactions).

The segment never decodes records. Appends are a single write of the whole
(already offset-assigned) blob; reads are preads of byte ranges whose ends are
found by walking 61-byte batch headers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import crc32c

from kops.broker.log.config import CorruptRecordError, KafkaStorageError, LogConfig
from kops.broker.log.index import OffsetIndex, TimeIndex
from kops.broker.log.transactions import TXN_INDEX_SUFFIX, TxnIndex
from kops.protocol.batch import HEADER_SIZE, BatchHeader, parse_header

__all__ = ["BatchMeta", "LogSegment", "segment_name", "whole_batches"]

log = logging.getLogger(__name__)

# Header scans read this much at a time: a few index intervals' worth of headers per syscall.
SCAN_CHUNK = 64 * 1024
# Recovery must read whole batches for the CRC, so it reads bigger slabs.
RECOVER_CHUNK = 4 * 1024 * 1024
MIN_BATCH_LENGTH = HEADER_SIZE - 12
MAX_RELATIVE_OFFSET = (1 << 31) - 1

_BASE_AND_LENGTH = struct.Struct(">qi")
_LAST_DELTA = struct.Struct(">i")
_CRC_FIELD = struct.Struct(">I")

# (position within the appended blob, last offset, max timestamp, size)
BatchMeta = tuple[int, int, int, int]


class _Tail(NamedTuple):
    """What a header walk from a segment's last index entry found."""

    start: int  # where the walk began: the last indexed batch, or 0
    end: int  # the end of the last whole batch
    next_offset: int
    max_timestamp: int
    max_ts_offset: int


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


def whole_batches(data: bytes, upper_bound: int) -> tuple[int, bool]:
    """Length of the prefix of `data` made of whole batches whose last offset < upper_bound.

    The second value is True when a batch was left out because of upper_bound.
    Reads only base offset, length and last offset delta of each header.
    """
    p = 0
    n = len(data)
    unpack = _BASE_AND_LENGTH.unpack_from
    unpack_delta = _LAST_DELTA.unpack_from
    while p + HEADER_SIZE <= n:
        base, length = unpack(data, p)
        size = length + 12
        if p + size > n or length < MIN_BATCH_LENGTH:
            return p, False
        if base + unpack_delta(data, p + 23)[0] >= upper_bound:
            return p, True
        p += size
    return p, False


class LogSegment:
    def __init__(self, directory: Path, base_offset: int, config: LogConfig) -> None:
        name = segment_name(base_offset)
        self.base_offset = base_offset
        self.log_path = directory / f"{name}.log"
        self.index = OffsetIndex(
            directory / f"{name}.index", base_offset, config.segment_index_bytes // 8
        )
        self.time_index = TimeIndex(
            directory / f"{name}.timeindex", base_offset, config.segment_index_bytes // 12
        )
        self.txn_index = TxnIndex(directory / f"{name}{TXN_INDEX_SUFFIX}")
        # Set by recover(): the txnindex was cleared, a producer-state replay must refill it.
        self.reindexed = False
        self.index_interval = config.index_interval_bytes
        self.size = 0
        self.next_offset = base_offset
        self.max_timestamp = -1
        self.offset_of_max_timestamp = -1
        self.bytes_since_last_index = 0
        # Time-based rolling counts from here: wall clock of the first append, or after a
        # reopen the first batch's timestamp (see _reset_rolling_basis).
        self.rolling_basis_ms: int | None = None
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"LogSegment({self.base_offset}, size={self.size}, next={self.next_offset})"

    # --- file handles -------------------------------------------------------------------

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        return self._fd

    def create(self) -> None:
        """Start an empty segment, discarding any stale files with the same name."""
        fd = self._file()
        os.ftruncate(fd, 0)
        self.index.replace_all(array("q"), array("q"))
        self.time_index.replace_all(array("q"), array("q"))
        self.txn_index.clear()

    def close_handles(self) -> None:
        """Release file descriptors; reads reopen lazily (old segments are rarely read)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.index.close()
        self.time_index.close()
        self.txn_index.close()

    def flush(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
        else:
            fd = os.open(self.log_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.index.flush()
        self.time_index.flush()
        self.txn_index.flush()

    def delete(self) -> None:
        self.close_handles()
        self.log_path.unlink(missing_ok=True)
        self.index.delete()
        self.time_index.delete()
        self.txn_index.delete()

    @property
    def is_empty(self) -> bool:
        return self.size == 0

    def is_full(self, last_offset: int) -> bool:
        """Whether a batch ending at `last_offset` can't be indexed here (relative offset or index space)."""
        return (
            last_offset - self.base_offset > MAX_RELATIVE_OFFSET
            or self.index.is_full
            or self.time_index.is_full
        )

    # --- append -------------------------------------------------------------------------

    def append(
        self, data: bytes | bytearray | memoryview, metas: list[BatchMeta], now_ms: int
    ) -> None:
        fd = self._file()
        start = self.size
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                written += os.write(fd, view[written:])
        except OSError as exc:
            # Don't leave half a blob behind; later appends would land after garbage.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise KafkaStorageError(f"append to {self.log_path} failed: {exc}") from exc
        for rel, last_offset, max_ts, size in metas:
            self._track_batch(start + rel, last_offset, max_ts, size)
        self.size = start + len(view)
        self.next_offset = metas[-1][1] + 1
        if self.rolling_basis_ms is None:
            self.rolling_basis_ms = now_ms

    def _track_batch(self, position: int, last_offset: int, max_ts: int, size: int) -> None:
        if max_ts > self.max_timestamp:
            self.max_timestamp = max_ts
            self.offset_of_max_timestamp = last_offset
        # Kafka's rule: index the batch that follows more than index_interval bytes.
        if self.bytes_since_last_index > self.index_interval:
            self.index.append(last_offset, position)
            self.time_index.maybe_append(self.max_timestamp, self.offset_of_max_timestamp)
            self.bytes_since_last_index = 0
        self.bytes_since_last_index += size

    def on_roll(self) -> None:
        # A final time entry makes the segment's max timestamp visible to time lookups.
        if self.max_timestamp >= 0:
            self.time_index.maybe_append(self.max_timestamp, self.offset_of_max_timestamp)
        self.index.close()
        self.time_index.close()

    # --- reads --------------------------------------------------------------------------

    def read(self, position: int, length: int) -> bytes:
        return os.pread(self._file(), length, position)

    def iter_headers(
        self, position: int = 0, chunk: int = SCAN_CHUNK
    ) -> Iterator[tuple[int, BatchHeader]]:
        """Headers of the batches from `position` to the end, reading `chunk` bytes at a time."""
        fd = self._file()
        end = self.size
        while position + HEADER_SIZE <= end:
            buf = os.pread(fd, min(chunk, end - position), position)
            p = 0
            n = len(buf)
            while p + HEADER_SIZE <= n:
                header = parse_header(buf, p)
                if header.batch_length < MIN_BATCH_LENGTH:
                    raise CorruptRecordError(
                        f"bad batch length at {position + p} in {self.log_path}"
                    )
                if position + p + header.batch_length + 12 > end:
                    return  # partial trailing batch
                yield position + p, header
                p += header.batch_length + 12
            if p == 0:
                return  # a short read: the file is shorter than we thought
            position += p

    def iter_raw(self, position: int = 0) -> Iterator[tuple[BatchHeader, bytes]]:
        """Whole batches from `position` on, read SCAN_CHUNK-or-more at a time (not a hot path)."""
        end = self.size
        want = SCAN_CHUNK
        while position + HEADER_SIZE <= end:
            buf = self.read(position, min(max(want, SCAN_CHUNK), end - position))
            want = SCAN_CHUNK
            p = 0
            n = len(buf)
            while p + HEADER_SIZE <= n:
                header = parse_header(buf, p)
                size = header.batch_length + 12
                if header.batch_length < MIN_BATCH_LENGTH:
                    raise CorruptRecordError(
                        f"bad batch length at {position + p} in {self.log_path}"
                    )
                if p + size > n:
                    want = size
                    break
                yield header, buf[p : p + size]
                p += size
            if p == 0 and (want == SCAN_CHUNK or position + want > end):
                return  # short file: a partial trailing batch
            position += p

    def find_batch(self, offset: int) -> tuple[int, BatchHeader] | None:
        """The first batch whose last offset is >= `offset` (the one containing it, if any)."""
        # The target is at most about one index interval past the entry, so read just that.
        chunk = min(SCAN_CHUNK, max(4096, self.index_interval + 1024))
        for position, header in self.iter_headers(self.index.lookup(offset), chunk):
            if header.base_offset + header.last_offset_delta >= offset:
                return position, header
        return None

    def batches_by_timestamp(
        self, timestamp: int, min_offset: int
    ) -> Iterator[tuple[int, BatchHeader]]:
        """(position, header) of the batches, in offset order, that may hold a record with a
        timestamp >= `timestamp`: max timestamp >= `timestamp`, last offset >= min_offset.

        Starts where the time index says the first such batch can be; callers usually
        stop at the first batch (its records decide).
        """
        start = self.time_index.offset_before(timestamp)
        start = min_offset if start is None else max(start, min_offset)
        for position, header in self.iter_headers(self.index.lookup(start)):
            if header.max_timestamp >= timestamp and header.last_offset >= min_offset:
                yield position, header

    def first_header(self) -> BatchHeader | None:
        if self.size < HEADER_SIZE:
            return None
        return parse_header(self.read(0, HEADER_SIZE))

    # --- loading and recovery -----------------------------------------------------------

    def load(self) -> None:
        """Open a segment trusted to be intact (clean shutdown, or wholly below the recovery
        point); rebuild indexes that look wrong."""
        if not self._load_indexes():
            log.info("rebuilding indexes of %s", self.log_path)
            self.recover(verify_crc=False)
            return
        self._scan_tail()

    def load_flushed(self, recovery_point: int) -> bool:
        """Open the segment holding the recovery point, trusting it if nothing lies past it.

        True, loaded as by load(), when the indexes pass load()'s sanity checks and the
        file ends with a whole batch whose last offset is below `recovery_point` (or is
        empty): everything in it was flushed. False, the file untouched, when something
        is (or may be) at or past the recovery point: the caller recovers the segment.
        """
        if not self._load_indexes():
            return False
        try:
            tail = self._read_tail()
        except CorruptRecordError:
            return False
        if tail.end != self.size or tail.next_offset > recovery_point:
            return False
        self._apply_tail(tail)
        return True

    def _load_indexes(self) -> bool:
        self.size = os.fstat(self._file()).st_size
        return self.index.load() and self.time_index.load() and self._indexes_sane()

    def _indexes_sane(self) -> bool:
        last = self.index.last_entry()
        if last is not None:
            offset, position = last
            if position + HEADER_SIZE > self.size:
                return False
            header = parse_header(self.read(position, HEADER_SIZE))
            if header.magic != 2 or header.last_offset != offset:
                return False
        last_time = self.time_index.last_entry()
        return last_time is None or last_time[1] >= self.base_offset

    def _read_tail(self) -> _Tail:
        """Walk the headers from the last index entry on; no CRC checks, nothing changed."""
        last = self.index.last_entry()
        start = 0 if last is None else last[1]
        last_time = self.time_index.last_entry()
        max_ts, max_ts_offset = (-1, -1) if last_time is None else last_time
        end, next_offset = start, self.base_offset
        for position, header in self.iter_headers(start):
            if header.max_timestamp > max_ts:
                max_ts, max_ts_offset = header.max_timestamp, header.last_offset
            end = position + header.size
            next_offset = header.last_offset + 1
        return _Tail(start, end, next_offset, max_ts, max_ts_offset)

    def _scan_tail(self) -> None:
        """Recompute next offset, max timestamp and index spacing from the last index entry on."""
        tail = self._read_tail()
        if tail.end < self.size:
            # Only an unclean shutdown leaves a partial batch; drop it rather than append after it.
            log.warning(
                "truncating %d stray bytes at the end of %s", self.size - tail.end, self.log_path
            )
            os.ftruncate(self._file(), tail.end)
            self.size = tail.end
        self._apply_tail(tail)

    def _apply_tail(self, tail: _Tail) -> None:
        self.max_timestamp, self.offset_of_max_timestamp = tail.max_timestamp, tail.max_ts_offset
        self.next_offset = tail.next_offset
        self.bytes_since_last_index = self.size - tail.start
        self._reset_rolling_basis()

    def recover(
        self,
        *,
        verify_crc: bool = True,
        min_offset: int | None = None,
        on_batch: Callable[[BatchHeader], None] | None = None,
    ) -> int:
        """Rebuild both indexes by walking every batch; cut the file at the first invalid byte.

        Checks each batch's length, magic, offsets (monotonic, >= min_offset, relative
        offset fits) and, when verify_crc, its CRC. Returns the number of bytes truncated.
        The txnindex is cleared: the producer-state replay after it refills it (`reindexed`).
        """
        self.txn_index.clear()
        self.reindexed = True
        fd = self._file()
        end = self.size = os.fstat(fd).st_size
        idx_offsets, idx_positions = array("q"), array("q")
        ts_values, ts_offsets = array("q"), array("q")
        max_ts, max_ts_offset, since_index = -1, -1, 0
        expected = self.base_offset if min_offset is None else max(min_offset, self.base_offset)
        position, want, bad = 0, RECOVER_CHUNK, False
        while position < end and not bad:
            buf = os.pread(fd, min(max(want, RECOVER_CHUNK), end - position), position)
            want = RECOVER_CHUNK
            view = memoryview(buf)
            n = len(view)
            p = 0
            while p + HEADER_SIZE <= n:
                header = parse_header(view, p)
                size = header.batch_length + 12
                if (
                    header.magic != 2
                    or header.batch_length < MIN_BATCH_LENGTH
                    or header.base_offset < expected
                    or header.last_offset_delta < 0
                    or header.last_offset - self.base_offset > MAX_RELATIVE_OFFSET
                ):
                    bad = True
                    break
                if p + size > n:
                    if position + p + size > end:
                        bad = True  # torn tail
                    else:
                        want = size  # a batch larger than the slab: re-read it whole
                    break
                if verify_crc:
                    (crc,) = _CRC_FIELD.unpack_from(view, p + 17)
                    if crc32c.crc32c(view[p + 21 : p + size]) != crc:
                        bad = True
                        break
                last_offset = header.last_offset
                if header.max_timestamp > max_ts:
                    max_ts, max_ts_offset = header.max_timestamp, last_offset
                if since_index > self.index_interval:
                    idx_offsets.append(last_offset)
                    idx_positions.append(position + p)
                    if not ts_values or max_ts > ts_values[-1]:
                        ts_values.append(max_ts)
                        ts_offsets.append(max_ts_offset)
                    since_index = 0
                since_index += size
                expected = last_offset + 1
                if on_batch is not None:
                    on_batch(header)
                p += size
            if p == 0 and want == RECOVER_CHUNK:
                bad = True  # not even a whole header left
            position += p
            view.release()
        truncated = end - position
        if truncated:
            os.ftruncate(fd, position)
            self.size = position
        self.index.replace_all(idx_offsets, idx_positions)
        self.time_index.replace_all(ts_values, ts_offsets)
        self.max_timestamp, self.offset_of_max_timestamp = max_ts, max_ts_offset
        self.bytes_since_last_index = since_index
        self.next_offset = expected if self.size else self.base_offset
        self._reset_rolling_basis()
        return truncated

    def _reset_rolling_basis(self) -> None:
        """segment.ms counts from the first batch's timestamp after a reopen (Kafka's rule).

        A missing (-1) or future timestamp would make an idle segment roll at once or
        not for ages, so the time of loading stands in for it then (Kafka: the segment's
        creation time).
        """
        first = self.first_header()
        if first is None:
            self.rolling_basis_ms = None
            return
        now = time.time_ns() // 1_000_000
        ts = first.max_timestamp
        self.rolling_basis_ms = ts if 0 <= ts <= now else now

    # --- truncation ---------------------------------------------------------------------

    def truncate_to(self, offset: int) -> int:
        """Remove every batch whose last offset is >= `offset`; returns bytes removed."""
        found = self.find_batch(offset)
        if found is None:
            return 0
        position, header = found
        removed = self.size - position
        os.ftruncate(self._file(), position)
        self.size = position
        self.index.truncate_to_position(position)
        # Offsets are monotonic, so every surviving batch ends before the cut batch's base.
        self.time_index.truncate_to_offset(header.base_offset)
        self.txn_index.truncate_to(offset)
        self._scan_tail()
        return removed
