"""Sparse offset index (.index) and time index (.timeindex) of one segment.

Both are kept fully in memory (arrays of absolute values) for bisecting. New
entries are buffered and appended to the file in small groups: a crash can only
lose the tail of an index, and indexes are rebuilt after a crash anyway. Files
are not preallocated, so a file's length is always a whole number of entries and
nothing needs trimming.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from bisect import bisect_left, bisect_right
from pathlib import Path

__all__ = ["OffsetIndex", "TimeIndex"]

_OFFSET_ENTRY = struct.Struct(">ii")
_TIME_ENTRY = struct.Struct(">qi")
_BIG_ENDIAN_HOST = sys.byteorder == "big"
_WRITE_BATCH_BYTES = 4096


class _IndexFile:
    entry_size = 0

    def __init__(self, path: Path, base_offset: int, max_entries: int) -> None:
        self.path = path
        self.base_offset = base_offset
        self.max_entries = max(1, max_entries)
        self._fd: int | None = None
        self._pending = bytearray()

    def _writer(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return self._fd

    def _read_file(self) -> bytes | None:
        """The file's bytes, or None when it is missing or not a whole number of entries."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) % self.entry_size:
            return None
        return data

    def _rewrite(self, data: bytes) -> None:
        self._pending.clear()
        fd = self._writer()
        os.ftruncate(fd, 0)
        if data:
            os.write(fd, data)

    def _add(self, entry: bytes) -> None:
        self._pending += entry
        if len(self._pending) >= _WRITE_BATCH_BYTES:
            self.write_pending()

    def write_pending(self) -> None:
        if self._pending:
            os.write(self._writer(), self._pending)
            self._pending.clear()

    def _truncate_entries(self, n: int) -> None:
        self.write_pending()
        os.ftruncate(self._writer(), n * self.entry_size)

    def flush(self) -> None:
        self.write_pending()
        if self._fd is not None:
            os.fsync(self._fd)
        elif self.path.exists():
            # Rolled segments closed their handles; their index must still reach disk
            # before the recovery point moves past them.
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        self.write_pending()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def delete(self) -> None:
        self._pending.clear()
        self.close()
        self.path.unlink(missing_ok=True)


class OffsetIndex(_IndexFile):
    """Entries map a batch's LAST offset to the byte position where that batch starts.

    lookup(t) returns the position of the last indexed batch whose last offset is
    <= t; the batch holding t starts there or later, so a forward header scan from
    that position finds it.
    """

    entry_size = _OFFSET_ENTRY.size

    def __init__(self, path: Path, base_offset: int, max_entries: int) -> None:
        super().__init__(path, base_offset, max_entries)
        self.offsets = array("q")
        self.positions = array("q")

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def is_full(self) -> bool:
        return len(self.offsets) >= self.max_entries

    def load(self) -> bool:
        data = self._read_file()
        if data is None:
            return False
        raw = array("i")
        raw.frombytes(data)
        if not _BIG_ENDIAN_HOST:
            raw.byteswap()
        base = self.base_offset
        self.offsets = array("q", [rel + base for rel in raw[0::2]])
        self.positions = array("q", raw[1::2])
        return True

    def last_entry(self) -> tuple[int, int] | None:
        if not self.offsets:
            return None
        return self.offsets[-1], self.positions[-1]

    def lookup(self, offset: int) -> int:
        i = bisect_right(self.offsets, offset) - 1
        return self.positions[i] if i >= 0 else 0

    def append(self, offset: int, position: int) -> None:
        self.offsets.append(offset)
        self.positions.append(position)
        self._add(_OFFSET_ENTRY.pack(offset - self.base_offset, position))

    def replace_all(self, offsets: array[int], positions: array[int]) -> None:
        self.offsets = array("q", offsets)
        self.positions = array("q", positions)
        base = self.base_offset
        out = bytearray()
        for off, pos in zip(offsets, positions, strict=True):
            out += _OFFSET_ENTRY.pack(off - base, pos)
        self._rewrite(bytes(out))

    def truncate_to_position(self, position: int) -> None:
        """Drop entries pointing at or past `position` (the log was cut there)."""
        n = bisect_left(self.positions, position)
        if n == len(self.positions):
            return
        del self.offsets[n:]
        del self.positions[n:]
        self._truncate_entries(n)


class TimeIndex(_IndexFile):
    """Entries (max timestamp so far, last offset of the batch that first reached it).

    Timestamps strictly increase, so every batch up to an entry's offset has a
    timestamp <= the entry's timestamp.
    """

    entry_size = _TIME_ENTRY.size

    def __init__(self, path: Path, base_offset: int, max_entries: int) -> None:
        super().__init__(path, base_offset, max_entries)
        self.timestamps = array("q")
        self.offsets = array("q")

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def is_full(self) -> bool:
        return len(self.timestamps) >= self.max_entries

    def load(self) -> bool:
        data = self._read_file()
        if data is None:
            return False
        base = self.base_offset
        ts = array("q")
        offs = array("q")
        for t, rel in _TIME_ENTRY.iter_unpack(data):
            ts.append(t)
            offs.append(rel + base)
        self.timestamps, self.offsets = ts, offs
        return True

    def last_entry(self) -> tuple[int, int] | None:
        if not self.timestamps:
            return None
        return self.timestamps[-1], self.offsets[-1]

    def maybe_append(self, timestamp: int, offset: int) -> None:
        if self.timestamps and (
            timestamp <= self.timestamps[-1] or offset < self.offsets[-1] or self.is_full
        ):
            return
        self.timestamps.append(timestamp)
        self.offsets.append(offset)
        self._add(_TIME_ENTRY.pack(timestamp, offset - self.base_offset))

    def offset_before(self, timestamp: int) -> int | None:
        """Offset of the last entry whose timestamp is strictly below `timestamp`.

        Every batch up to that offset is older than `timestamp`, so a search may skip them.
        """
        i = bisect_left(self.timestamps, timestamp) - 1
        return self.offsets[i] if i >= 0 else None

    def replace_all(self, timestamps: array[int], offsets: array[int]) -> None:
        self.timestamps = array("q", timestamps)
        self.offsets = array("q", offsets)
        base = self.base_offset
        out = bytearray()
        for t, off in zip(timestamps, offsets, strict=True):
            out += _TIME_ENTRY.pack(t, off - base)
        self._rewrite(bytes(out))

    def truncate_to_offset(self, next_offset: int) -> None:
        """Drop entries for offsets >= next_offset."""
        n = bisect_left(self.offsets, next_offset)
        if n == len(self.offsets):
            return
        del self.timestamps[n:]
        del self.offsets[n:]
        self._truncate_entries(n)
