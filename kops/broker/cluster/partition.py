"""One partition replica as the broker sees it: its log, its leadership, and
the fetches parked on it waiting for data."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from kio.schema.errors import ErrorCode

from kops.broker.log.partition_log import AppendResult, PartitionLog


@dataclass
class Partition:
    topic: str
    index: int
    log: PartitionLog
    leader: int
    replicas: list[int]
    isr: list[int]
    leader_epoch: int = 0
    min_insync_replicas: int = 1
    _waiters: set[asyncio.Future] = field(default_factory=set, repr=False)

    def append(self, records: bytes, now_ms: int | None = None) -> AppendResult:
        result = self.log.append(records, self.leader_epoch, now_ms)
        # Single replica: an append is committed once it is in the local log.
        if len(self.isr) <= 1:
            self.log.high_watermark = self.log.log_end_offset
        self.wake_fetchers()
        return result

    def check_leader_epoch(self, current_leader_epoch: int) -> ErrorCode:
        """KIP-320: a client naming an older epoch is fenced, a newer one is ahead of us."""
        if current_leader_epoch < 0 or current_leader_epoch == self.leader_epoch:
            return ErrorCode.none
        if current_leader_epoch < self.leader_epoch:
            return ErrorCode.fenced_leader_epoch
        return ErrorCode.unknown_leader_epoch

    def wake_fetchers(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def park(self, waiter: asyncio.Future) -> None:
        self._waiters.add(waiter)

    def unpark(self, waiter: asyncio.Future) -> None:
        self._waiters.discard(waiter)
