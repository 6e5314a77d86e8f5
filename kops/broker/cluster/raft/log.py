"""The in-memory replicated log the Raft core reads and mutates.

The core owns one ``MemoryLog`` and changes it directly; every change is also
emitted as an action (``AppendEntries``, ``TruncateLog``, ...) so a driver can
mirror it to a file. At start-up the driver rebuilds a ``MemoryLog`` from what
is durable (``MemoryLog(entries, snapshot=...)``). Metadata logs are small, so
keeping them in memory is fine; the epoch index mirrors Kafka's
``leader-epoch-checkpoint``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kops.broker.cluster.raft.messages import Entry, OffsetAndEpoch, Snapshot


class LogError(Exception):
    """An append or truncation that would break the log's shape."""


class MemoryLog:
    def __init__(self, entries: Iterable[Entry] = (), *, snapshot: Snapshot | None = None) -> None:
        self._snapshot = snapshot
        self._start = snapshot.end_offset if snapshot else 0
        self._entries: list[Entry] = []
        # (epoch, first offset) for each epoch run present in ``_entries``.
        self._epochs: list[tuple[int, int]] = []
        self.append(list(entries))

    # --- reads -------------------------------------------------------------

    @property
    def start_offset(self) -> int:
        """First offset held as an entry (= snapshot end offset, or 0)."""
        return self._start

    @property
    def end_offset(self) -> int:
        """Log end offset (LEO): the offset the next entry gets."""
        return self._start + len(self._entries)

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    @property
    def start_epoch(self) -> int:
        """Epoch of the entry just before ``start_offset`` (0 for an empty prefix)."""
        return self._snapshot.epoch if self._snapshot else 0

    @property
    def last_epoch(self) -> int:
        return self._entries[-1].epoch if self._entries else self.start_epoch

    def end_offset_and_epoch(self) -> OffsetAndEpoch:
        return OffsetAndEpoch(self.last_epoch, self.end_offset)

    def epoch_at(self, end_offset: int) -> int:
        """Epoch of the entry at ``end_offset - 1`` (the 'last fetched epoch' for that offset)."""
        if end_offset == self._start:
            return self.start_epoch
        return self.entry(end_offset - 1).epoch

    def entry(self, offset: int) -> Entry:
        if not self._start <= offset < self.end_offset:
            raise LogError(f"offset {offset} outside [{self._start}, {self.end_offset})")
        return self._entries[offset - self._start]

    def read(
        self, start: int, end: int | None = None, max_entries: int | None = None
    ) -> list[Entry]:
        if start < self._start:
            raise LogError(f"offset {start} is below the log start {self._start}")
        stop = self.end_offset if end is None else min(end, self.end_offset)
        if max_entries is not None:
            stop = min(stop, start + max_entries)
        return self._entries[start - self._start : max(stop - self._start, start - self._start)]

    def entries(self) -> list[Entry]:
        return list(self._entries)

    def end_offset_for_epoch(self, epoch: int) -> OffsetAndEpoch | None:
        """Largest epoch <= ``epoch`` known to this log and the end offset of that epoch.

        The end offset is the first offset of the next epoch (or the LEO). Returns
        None when every known epoch is larger, or the answer lies inside the
        snapshot (before ``start_offset``), where this log cannot tell.
        """
        for idx in range(len(self._epochs) - 1, -1, -1):
            ep = self._epochs[idx][0]
            if ep <= epoch:
                end = self._epochs[idx + 1][1] if idx + 1 < len(self._epochs) else self.end_offset
                return OffsetAndEpoch(ep, end)
        # Every entry has a larger epoch: only the snapshot boundary is left.
        if self._start == 0:
            return OffsetAndEpoch(0, 0)
        if epoch >= self.start_epoch:
            return OffsetAndEpoch(self.start_epoch, self._start)
        return None

    # --- writes ------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        expected = self.end_offset
        last = self.last_epoch
        for e in entries:
            if e.offset != expected:
                raise LogError(f"append at {e.offset}, expected {expected}")
            if e.epoch < last:
                raise LogError(f"epoch {e.epoch} after epoch {last}")
            if not self._epochs or self._epochs[-1][0] != e.epoch:
                self._epochs.append((e.epoch, e.offset))
            self._entries.append(e)
            expected += 1
            last = e.epoch

    def truncate(self, end_offset: int) -> None:
        """Drop entries at and after ``end_offset``."""
        if end_offset < self._start:
            raise LogError(f"truncate to {end_offset} below log start {self._start}")
        if end_offset >= self.end_offset:
            return
        del self._entries[end_offset - self._start :]
        while self._epochs and self._epochs[-1][1] >= end_offset:
            self._epochs.pop()

    def drop_prefix(self, snapshot: Snapshot) -> None:
        """Forget entries below ``snapshot.end_offset``: they are in the snapshot."""
        if snapshot.end_offset > self.end_offset or snapshot.end_offset < self._start:
            raise LogError(f"snapshot at {snapshot.end_offset} outside the log")
        if snapshot.epoch != self.epoch_at(snapshot.end_offset):
            raise LogError("snapshot epoch does not match the log")
        del self._entries[: snapshot.end_offset - self._start]
        self._start = snapshot.end_offset
        self._snapshot = snapshot
        self._rebuild_epochs()

    def reset_to_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` (a follower installing the leader's)."""
        self._entries = []
        self._start = snapshot.end_offset
        self._snapshot = snapshot
        self._epochs = []

    def _rebuild_epochs(self) -> None:
        self._epochs = []
        for e in self._entries:
            if not self._epochs or self._epochs[-1][0] != e.epoch:
                self._epochs.append((e.epoch, e.offset))
