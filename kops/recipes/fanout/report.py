"""What a fan-out reports: its progress, its result, and the settings it leaves in the source
group's commit metadata (read back by ``kops backlog status``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["METADATA_PREFIX", "FanoutProgress", "FanoutReport", "parse_metadata"]

#: Commit metadata of a fan-out's source group starts with this, then JSON.
METADATA_PREFIX = "kops-fanout:"


@dataclass(frozen=True)
class FanoutProgress:
    #: Records acknowledged by the target since this run started.
    forwarded: int
    #: Backlog at assignment time (None until the first assignment).
    total: int | None
    elapsed: float
    #: Records per second over the run.
    rate: float


@dataclass
class FanoutReport:
    source: str
    group: str
    target: str
    partitions: int
    forwarded: int = 0
    #: Backlog (records) found at assignment, from the committed offsets.
    backlog: int = 0
    created_target: bool = False
    caught_up: bool = False
    elapsed: float = 0.0
    #: Source group commit positions at the end, per source partition.
    committed: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.forwarded / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "group": self.group,
            "target": self.target,
            "partitions": self.partitions,
            "forwarded": self.forwarded,
            "backlog": self.backlog,
            "created_target": self.created_target,
            "caught_up": self.caught_up,
            "elapsed_s": round(self.elapsed, 3),
            "records_per_s": round(self.rate, 1),
            "committed": {str(p): o for p, o in sorted(self.committed.items())},
        }


def parse_metadata(text: str | None) -> dict[str, Any] | None:
    """The fan-out settings stored in a commit's metadata, or None if it is not a fan-out's."""
    if not text or not text.startswith(METADATA_PREFIX):
        return None
    try:
        data = json.loads(text[len(METADATA_PREFIX) :])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
