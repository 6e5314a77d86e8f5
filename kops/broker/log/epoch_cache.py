"""Leader-epoch cache: (epoch, start offset) pairs, persisted as `leader-epoch-checkpoint`.

Followers use it to find where their log diverges from the leader's (KIP-101/279).
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from pathlib import Path

from kops.broker.log.checkpoint import write_atomic

__all__ = ["LeaderEpochCache"]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "leader-epoch-checkpoint"
UNDEFINED = -1


class LeaderEpochCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[tuple[int, int]] = []  # (epoch, start offset), both increasing

    def load(self) -> bool:
        """Read the checkpoint; False when it is missing or unreadable (caller rebuilds)."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return False
        try:
            if int(lines[0]) != 0:
                return False
            count = int(lines[1])
            entries = []
            for line in lines[2 : 2 + count]:
                epoch, start = line.split()
                entries.append((int(epoch), int(start)))
        except (IndexError, ValueError):
            log.warning("ignoring malformed %s", self.path)
            return False
        if len(entries) != count:
            return False
        self.entries = entries
        return True

    def write(self, *, fsync: bool = False) -> None:
        lines = ["0", str(len(self.entries))] + [f"{e} {s}" for e, s in self.entries]
        write_atomic(self.path, "\n".join(lines) + "\n", fsync=fsync)

    def latest_epoch(self) -> int | None:
        return self.entries[-1][0] if self.entries else None

    def assign(self, epoch: int, start_offset: int) -> bool:
        """Record that `epoch` starts at `start_offset`; returns True if the cache changed."""
        if epoch < 0:
            return False  # batches from pre-epoch producers carry -1
        if self.entries:
            last_epoch, last_start = self.entries[-1]
            if epoch == last_epoch and start_offset >= last_start:
                return False
            if epoch < last_epoch and start_offset >= last_start:
                # An older epoch appearing later is a leader bug; Kafka ignores it too.
                log.warning(
                    "ignoring epoch %d at %d after epoch %d", epoch, start_offset, last_epoch
                )
                return False
        # Drop entries this one supersedes, as Kafka does, so both columns stay increasing.
        while self.entries and (
            self.entries[-1][0] >= epoch or self.entries[-1][1] >= start_offset
        ):
            self.entries.pop()
        self.entries.append((epoch, start_offset))
        return True

    def end_offset_for(self, epoch: int, log_end_offset: int) -> tuple[int, int]:
        """KIP-279: (largest known epoch <= `epoch`, start offset of the next epoch or the LEO)."""
        if epoch < 0 or not self.entries:
            return UNDEFINED, UNDEFINED
        if epoch == self.entries[-1][0]:
            return epoch, log_end_offset
        epochs = [e for e, _ in self.entries]
        i = bisect_right(epochs, epoch)  # first entry with a higher epoch
        if i == len(self.entries):
            return UNDEFINED, UNDEFINED  # asked about an epoch newer than ours
        next_start = self.entries[i][1]
        if i == 0:
            return epoch, next_start  # older than anything we know
        return self.entries[i - 1][0], next_start

    def truncate_from_end(self, end_offset: int) -> bool:
        """Forget epochs that start at or after `end_offset` (log truncated there)."""
        before = len(self.entries)
        while self.entries and self.entries[-1][1] >= end_offset:
            self.entries.pop()
        return len(self.entries) != before

    def truncate_from_start(self, start_offset: int) -> bool:
        """Drop epochs wholly below `start_offset`; the one spanning it now starts there."""
        i = bisect_right([s for _, s in self.entries], start_offset) - 1
        if i < 0 or (i == 0 and self.entries[0][1] == start_offset):
            return False
        epoch, _ = self.entries[i]
        self.entries = [(epoch, start_offset), *self.entries[i + 1 :]]
        return True

    def clear(self) -> None:
        self.entries = []
