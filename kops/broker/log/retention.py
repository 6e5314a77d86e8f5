"""Which old segments retention may delete (time- and size-based, Kafka's rules).

Only whole closed segments go, oldest first, and only ones lying entirely below
the high watermark; the active segment always stays.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from kops.broker.log.config import LogConfig
from kops.broker.log.segment import LogSegment

__all__ = ["closed_below", "deletable_segments", "segment_timestamp"]


def segment_timestamp(segment: LogSegment) -> int:
    """The segment's largest record timestamp, or its file mtime when no record has one."""
    if segment.max_timestamp >= 0:
        return segment.max_timestamp
    try:
        return int(os.stat(segment.log_path).st_mtime * 1000)
    except FileNotFoundError:
        return -1


def closed_below(segments: Sequence[LogSegment], high_watermark: int) -> int:
    """How many leading segments are closed and wholly below the high watermark."""
    n = 0
    for i in range(len(segments) - 1):
        if segments[i + 1].base_offset > high_watermark:
            break
        n += 1
    return n


def deletable_segments(
    segments: Sequence[LogSegment], config: LogConfig, now_ms: int, high_watermark: int
) -> int:
    """Number of leading segments that retention.ms / retention.bytes allow deleting."""
    if not config.delete_enabled:
        return 0
    limit = closed_below(segments, high_watermark)
    by_time = 0
    if config.retention_ms >= 0:
        for i in range(limit):
            if now_ms - segment_timestamp(segments[i]) > config.retention_ms:
                by_time = i + 1
            elif segments[i].size:
                break
            # An empty segment (the cleaner keeps the log's first one when nothing in it
            # survives) has nothing to keep: it goes with the next expired segment, and
            # never holds retention up while its own file time is recent.
    by_size = 0
    if config.retention_bytes >= 0:
        excess = sum(s.size for s in segments) - config.retention_bytes
        while by_size < limit and excess - segments[by_size].size >= 0:
            excess -= segments[by_size].size
            by_size += 1
    return max(by_time, by_size)
