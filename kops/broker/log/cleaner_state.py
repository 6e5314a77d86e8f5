"""The log cleaner's bookkeeping for one partition: `cleaner-state.json`.

Which offsets some pass has deduplicated (the dirty offset), and when each
range of offsets was first cleaned, so a tombstone stays readable for
delete.retention.ms after the pass that first cleaned it (see
kops.broker.log.cleaner).
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

from kops.broker.log.checkpoint import write_atomic

__all__ = ["MAX_HISTORY", "STATE_FILE", "CleanerState"]

log = logging.getLogger("kops.broker.log.cleaner")

STATE_FILE = "cleaner-state.json"
STATE_VERSION = 1
MAX_HISTORY = 64


@dataclass
class CleanerState:
    """Per-partition cleaner bookkeeping, persisted as `cleaner-state.json`.

    dirty_offset: offsets below it have been deduplicated by some pass.
    ends/times: offsets in [ends[i-1], ends[i]) were first cleaned at times[i]
    (both ascending; offsets below ends[0] count as cleaned at times[0]).
    tombstone_due_ms: when the earliest kept tombstone becomes removable.
    """

    dirty_offset: int = 0
    ends: list[int] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    tombstone_due_ms: int | None = None

    @classmethod
    def load(cls, directory: Path) -> CleanerState:
        path = directory / STATE_FILE
        try:
            doc = json.loads(path.read_text())
            if doc["version"] != STATE_VERSION:
                raise ValueError(f"unknown version {doc['version']}")
            ends = [int(e) for e in doc["ends"]]
            times = [int(t) for t in doc["times"]]
            if len(ends) != len(times):
                raise ValueError("ends and times differ in length")
            due = doc.get("tombstone_due_ms")
            return cls(int(doc["dirty_offset"]), ends, times, None if due is None else int(due))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Starting over only makes the next pass re-clean and keep tombstones longer.
            log.warning("ignoring unreadable %s: %s", path, exc)
            return cls()

    def save(self, directory: Path) -> None:
        doc = {
            "version": STATE_VERSION,
            "dirty_offset": self.dirty_offset,
            "ends": self.ends,
            "times": self.times,
            "tombstone_due_ms": self.tombstone_due_ms,
        }
        write_atomic(directory / STATE_FILE, json.dumps(doc, separators=(",", ":")), fsync=True)

    def copy(self) -> CleanerState:
        return CleanerState(
            self.dirty_offset, list(self.ends), list(self.times), self.tombstone_due_ms
        )

    def first_cleaned_ms(self, offset: int) -> int | None:
        """When a pass first cleaned `offset`; None when unknown (treat as now)."""
        i = bisect_right(self.ends, offset)
        return self.times[i] if i < len(self.times) else None

    def horizon(self, now_ms: int, delete_retention_ms: int) -> int:
        """Tombstones at offsets below this were first cleaned >= delete_retention_ms ago."""
        k = bisect_right(self.times, now_ms - delete_retention_ms) - 1
        return self.ends[k] if k >= 0 else -1

    def record_pass(self, end: int, now_ms: int, delete_retention_ms: int) -> None:
        """A pass cleaned everything below `end` at `now_ms`."""
        if end > (self.ends[-1] if self.ends else -1) and end > self.dirty_offset:
            now_ms = max(now_ms, self.times[-1] if self.times else now_ms)
            self.ends.append(end)
            self.times.append(now_ms)
        self.dirty_offset = max(self.dirty_offset, end)
        # Entries already past the horizon add nothing beyond the newest of them.
        k = bisect_right(self.times, now_ms - delete_retention_ms) - 1
        if k > 0:
            del self.ends[:k], self.times[:k]
        # Merging the oldest entries moves their time later: tombstones only live longer.
        while len(self.ends) > MAX_HISTORY:
            del self.ends[0], self.times[0]

    def truncate(self, offset: int) -> bool:
        """The log was cut at `offset`: offsets from there on will be new data."""
        changed = False
        if self.dirty_offset > offset:
            self.dirty_offset = offset
            changed = True
        while self.ends and self.ends[-1] > offset:
            prev = self.ends[-2] if len(self.ends) > 1 else 0
            if prev >= offset:
                del self.ends[-1], self.times[-1]
            else:
                self.ends[-1] = offset
            changed = True
        return changed
