"""LogManager: every partition log under one data directory, plus its checkpoints.

recovery-point-offset-checkpoint holds, per partition, the offset up to which
the log is known to be fsynced; an unclean start re-validates only what lies
past it (kops.broker.log.recovery). It only ever claims what was synced: a
partition's point moves when its log is flushed, that is at a clean shutdown,
after a recovery, and in checkpoint_recovery_points, which (like Kafka's flush
after a roll plus its log.flush.offset.checkpoint.interval.ms task) syncs the
rolled segments, moving the point to the active segment's base, and rewrites
the file.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import uuid
from pathlib import Path

from kops.broker.log.checkpoint import (
    fsync_dir,
    read_offset_checkpoint,
    write_offset_checkpoint,
)
from kops.broker.log.cleaner import CleanStats
from kops.broker.log.config import LogConfig
from kops.broker.log.partition_log import PartitionLog

__all__ = ["LogManager", "partition_dir_name"]

log = logging.getLogger(__name__)

CLEAN_SHUTDOWN_MARKER = ".kafka_cleanshutdown"
RECOVERY_POINT_CHECKPOINT = "recovery-point-offset-checkpoint"
LOG_START_CHECKPOINT = "log-start-offset-checkpoint"
HIGH_WATERMARK_CHECKPOINT = "replication-offset-checkpoint"
# Kafka's log.flush.offset.checkpoint.interval.ms default.
DEFAULT_CHECKPOINT_INTERVAL_MS = 60_000
DELETE_SUFFIX = "-delete"
# Topic names may contain '-' and '.', so the partition is whatever follows the last '-'.
_PARTITION_DIR = re.compile(r"^(?P<topic>.+)-(?P<partition>\d+)$")
# The controller quorum's log (kops.broker.cluster.raft.store) shares the data dir but
# is not a partition: never open, recover or delete it as one (Kafka skips it too).
METADATA_TOPIC = "__cluster_metadata"

TopicPartition = tuple[str, int]


def partition_dir_name(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class LogManager:
    def __init__(
        self, data_dir: Path, *, checkpoint_interval_ms: int = DEFAULT_CHECKPOINT_INTERVAL_MS
    ) -> None:
        self.data_dir = Path(data_dir)
        self.checkpoint_interval_ms = checkpoint_interval_ms
        self._last_checkpoint_ms = _now_ms()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._logs: dict[TopicPartition, PartitionLog] = {}
        marker = self.data_dir / CLEAN_SHUTDOWN_MARKER
        # A fresh directory has nothing to recover, so it counts as clean.
        self.clean_shutdown = marker.exists() or not self.existing_partitions()
        if marker.exists():
            marker.unlink()
            fsync_dir(self.data_dir)
        self._recovery_points = read_offset_checkpoint(self.data_dir / RECOVERY_POINT_CHECKPOINT)
        self._log_starts = read_offset_checkpoint(self.data_dir / LOG_START_CHECKPOINT)
        self._high_watermarks = read_offset_checkpoint(self.data_dir / HIGH_WATERMARK_CHECKPOINT)
        self._purge_deleted_dirs()

    def _purge_deleted_dirs(self) -> None:
        """Finish deletions a crash interrupted (directories renamed to *-delete)."""
        for path in self.data_dir.iterdir():
            if path.is_dir() and path.name.endswith(DELETE_SUFFIX):
                shutil.rmtree(path, ignore_errors=True)

    # --- partitions ---------------------------------------------------------------------

    def existing_partitions(self) -> list[TopicPartition]:
        out = []
        for path in self.data_dir.iterdir():
            if not path.is_dir() or path.name.endswith(DELETE_SUFFIX):
                continue
            m = _PARTITION_DIR.match(path.name)
            if m and m["topic"] != METADATA_TOPIC:
                out.append((m["topic"], int(m["partition"])))
        return sorted(out)

    def open_partition(self, topic: str, partition: int, config: LogConfig) -> PartitionLog:
        """Open (creating if needed) a partition log; returns the already-open one if any."""
        key = (topic, partition)
        existing = self._logs.get(key)
        if existing is not None:
            existing.update_config(config)
            return existing
        directory = self.data_dir / partition_dir_name(topic, partition)
        plog = PartitionLog(
            directory,
            config,
            recover=not self.clean_shutdown,
            log_start_offset=self._log_starts.get(key),
            recovery_point=self._recovery_points.get(key, 0),
        )
        if plog.recovered_segments:
            # Recovery synced what it re-validated: record that, or the next crash redoes it.
            self._recovery_points[key] = plog.recovery_point
            write_offset_checkpoint(
                self.data_dir / RECOVERY_POINT_CHECKPOINT, self._recovery_points
            )
        hw = self._high_watermarks.get(key)
        plog.checkpointed_high_watermark = hw
        if hw is not None:
            plog.high_watermark = hw  # clamped to [log start, LEO]
        plog.on_log_start_offset_change = self._on_log_start_change
        self._logs[key] = plog
        return plog

    def get(self, topic: str, partition: int) -> PartitionLog | None:
        return self._logs.get((topic, partition))

    def logs(self) -> dict[TopicPartition, PartitionLog]:
        return dict(self._logs)

    def delete_partition(self, topic: str, partition: int) -> None:
        """Close the log and remove its directory (rename first so a crash can't resurrect it)."""
        key = (topic, partition)
        plog = self._logs.pop(key, None)
        if plog is not None:
            plog.close_handles()
        directory = self.data_dir / partition_dir_name(topic, partition)
        for checkpoint in (self._recovery_points, self._log_starts, self._high_watermarks):
            checkpoint.pop(key, None)
        if directory.exists():
            doomed = directory.with_name(f"{directory.name}.{uuid.uuid4().hex}{DELETE_SUFFIX}")
            directory.rename(doomed)
            fsync_dir(self.data_dir)
            shutil.rmtree(doomed, ignore_errors=True)
        self._write_checkpoints(fsync=True)

    # --- housekeeping -------------------------------------------------------------------

    def apply_retention(self, now_ms: int) -> None:
        """Retention for every log; one log's failure (logged) doesn't stop the others."""
        for key, plog in list(self._logs.items()):
            try:
                plog.apply_retention(now_ms)
            except Exception:
                log.exception("retention of %s-%d failed", *key)

    def compact_all(self, now_ms: int) -> CleanStats:
        """One compaction pass over every compacted log that is due one (in this thread;
        kops.broker.housekeeping runs it off the event loop)."""
        total = CleanStats()
        for key, plog in list(self._logs.items()):
            try:
                total.add(plog.compact(now_ms))
            except Exception:
                log.exception("compaction of %s-%d failed", *key)
        return total

    def maybe_roll_all(self, now_ms: int) -> None:
        """Roll every active segment idle for segment.ms, so retention and the cleaner reach it."""
        for key, plog in list(self._logs.items()):
            try:
                plog.maybe_roll(now_ms)
            except Exception:
                log.exception("rolling %s-%d failed", *key)

    def checkpoint_recovery_points(self, now_ms: int, *, force: bool = False) -> bool:
        """Sync every log's rolled segments, then rewrite recovery-point-offset-checkpoint.

        Runs at most once per checkpoint_interval_ms unless `force`; returns whether it
        ran. The active segments are not synced (as in Kafka without flush.ms), so
        their recovery point stays at their base until a roll or a clean shutdown.
        """
        if not force and now_ms - self._last_checkpoint_ms < self.checkpoint_interval_ms:
            return False
        self._last_checkpoint_ms = now_ms
        for key, plog in list(self._logs.items()):
            try:
                plog.flush(active=False)
            except Exception:
                log.exception("flushing %s-%d failed", *key)  # its point stays where it was
        self._snapshot_offsets()
        write_offset_checkpoint(self.data_dir / RECOVERY_POINT_CHECKPOINT, self._recovery_points)
        return True

    def flush_all(self) -> None:
        for plog in self._logs.values():
            plog.flush()
        self._write_checkpoints(fsync=True)

    def _on_log_start_change(self, plog: PartitionLog) -> None:
        # DeleteRecords must survive a crash, so checkpoint the log starts right away.
        self._snapshot_offsets()
        write_offset_checkpoint(self.data_dir / LOG_START_CHECKPOINT, self._log_starts, fsync=True)

    def _snapshot_offsets(self) -> None:
        for key, plog in self._logs.items():
            self._recovery_points[key] = plog.recovery_point
            self._log_starts[key] = plog.log_start_offset
            self._high_watermarks[key] = plog.high_watermark

    def _write_checkpoints(self, *, fsync: bool) -> None:
        self._snapshot_offsets()
        write_offset_checkpoint(
            self.data_dir / RECOVERY_POINT_CHECKPOINT, self._recovery_points, fsync=fsync
        )
        write_offset_checkpoint(self.data_dir / LOG_START_CHECKPOINT, self._log_starts, fsync=fsync)
        write_offset_checkpoint(
            self.data_dir / HIGH_WATERMARK_CHECKPOINT, self._high_watermarks, fsync=fsync
        )

    def close(self) -> None:
        """Close every log, write the checkpoints, then mark the shutdown clean."""
        for plog in self._logs.values():
            plog.close()
        self._write_checkpoints(fsync=True)
        self._logs.clear()
        (self.data_dir / CLEAN_SHUTDOWN_MARKER).write_bytes(b"")
        fsync_dir(self.data_dir)
