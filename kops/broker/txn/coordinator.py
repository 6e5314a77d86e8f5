"""The transaction coordinator: InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn.

The rules are :mod:`kops.broker.txn.state`'s; this module does their I/O, per
transactional id one at a time: persist the new state to `__transaction_state`,
answer, and for a transaction that is to commit or abort write its markers to
every partition it touched (then record it complete). Markers in
`__consumer_offsets` also tell the group coordinator to make the transaction's
offsets visible, or drop them.

Recovery: at start the state topic is replayed; a transaction found preparing
gets its markers (again: a marker is idempotent for its epoch), one found ongoing
is aborted once its timeout passes (transaction.abort.timed.out.transaction.
cleanup.interval.ms checks). A single broker owns every partition of the state
topic, which is created on first use. Replicating the state across a cluster is
not done yet: there, transactional producers are refused (see
kops.broker.handlers.init_producer_id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from kio.schema.errors import ErrorCode

from kops.broker.aio import cancel_and_wait
from kops.broker.cluster.view import ClusterView
from kops.broker.groups.storage import OFFSETS_TOPIC, write_error
from kops.broker.txn.log import TRANSACTION_STATE_TOPIC, TransactionLog
from kops.broker.txn.state import (
    TopicPartition,
    TxnDecision,
    TxnMetadata,
    TxnState,
    abort_timed_out,
    add_partitions,
    end_transaction,
    init_producer_id,
    markers_written,
)

__all__ = ["TransactionCoordinator"]

log = logging.getLogger("kops.broker.txn")

# Between attempts at a marker that could not be written (its partition is briefly
# leaderless or closing): the transaction stays preparing and is retried.
_MARKER_RETRY_S = 0.5


def now_ms() -> int:
    # Wall-clock: transaction start times are persisted and compared after a restart.
    return int(time.time() * 1000)


class TxnBroker(ClusterView, Protocol):
    def allocate_producer_id(self) -> int: ...

    async def replicated(self, topic: str, index: int, timeout: float) -> ErrorCode: ...

    def transaction_completed(self, index: int, producer_id: int, commit: bool) -> None:
        """A marker reached `__consumer_offsets` partition `index` (the groups' part)."""
        ...


class TransactionCoordinator:
    def __init__(self, broker: TxnBroker) -> None:
        self.broker = broker
        self.store = TransactionLog(broker)
        self.txns: dict[str, TxnMetadata] = {}
        self.max_timeout_ms = broker.config.int("transaction.max.timeout.ms")
        self._check_interval_ms = broker.config.int(
            "transaction.abort.timed.out.transaction.cleanup.interval.ms"
        )
        self._locks: dict[str, asyncio.Lock] = {}
        self._completions: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        if self.store.exists():
            self._load()
        self._tasks.append(asyncio.create_task(self._expiry_loop(), name="kops-txn-expiry"))

    async def stop(self) -> None:
        await cancel_and_wait([*self._tasks, *self._completions.values()])
        self._completions.clear()

    def _load(self) -> None:
        for index in range(self.store.partitions):
            self.txns.update(self.store.load_partition(index))
        preparing = [m for m in self.txns.values() if m.state.preparing]
        log.info(
            "loaded %d transactional ids from %s (%d to complete)",
            len(self.txns),
            TRANSACTION_STATE_TOPIC,
            len(preparing),
        )
        for meta in preparing:
            self._complete(meta)

    def ensure_topic(self) -> None:
        """FindCoordinator for a transactional id: the state topic exists from then on."""
        if not self.store.partitions:
            self.store.ensure()

    # ---- requests -------------------------------------------------------------------

    async def init_producer_id(
        self, transactional_id: str, timeout_ms: int, expected: tuple[int, int]
    ) -> tuple[ErrorCode, int, int]:
        def decide(meta: TxnMetadata | None, now: int) -> TxnDecision:
            return init_producer_id(
                meta,
                transactional_id,
                timeout_ms,
                now,
                self.broker.allocate_producer_id,
                max_timeout_ms=self.max_timeout_ms,
                expected=expected,
            )

        error = await self._decide(transactional_id, decide)
        meta = self.txns.get(transactional_id)
        if error != ErrorCode.none or meta is None:
            return error, -1, -1
        return ErrorCode.none, meta.producer_id, meta.producer_epoch

    async def add_partitions(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        partitions: Iterable[TopicPartition],
    ) -> ErrorCode:
        wanted = list(partitions)
        return await self._decide(
            transactional_id,
            lambda meta, now: add_partitions(meta, producer_id, epoch, wanted, now),
        )

    async def add_offsets(
        self, transactional_id: str, producer_id: int, epoch: int, offsets_partition: int
    ) -> ErrorCode:
        return await self.add_partitions(
            transactional_id, producer_id, epoch, [(OFFSETS_TOPIC, offsets_partition)]
        )

    async def end_transaction(
        self, transactional_id: str, producer_id: int, epoch: int, commit: bool
    ) -> ErrorCode:
        return await self._decide(
            transactional_id,
            lambda meta, now: end_transaction(meta, producer_id, epoch, commit, now),
        )

    def listed(
        self, states: frozenset[str], producer_ids: frozenset[int], min_duration_ms: int
    ) -> list[TxnMetadata]:
        """ListTransactions: the ids in one of `states`, held by one of `producer_ids`,
        open at least `min_duration_ms` (each filter empty or -1: no filter)."""
        now = now_ms()
        return [
            meta
            for meta in self.txns.values()
            if (not states or meta.state.value in states)
            and (not producer_ids or meta.producer_id in producer_ids)
            and (
                min_duration_ms < 0
                or (meta.start_ms >= 0 and now - meta.start_ms >= min_duration_ms)
            )
        ]

    def check_producer(self, transactional_id: str, producer_id: int, epoch: int) -> ErrorCode:
        """TxnOffsetCommit's fencing: the producer must be the id's current one."""
        meta = self.txns.get(transactional_id)
        if meta is None or meta.producer_id != producer_id:
            return ErrorCode.invalid_producer_id_mapping
        if meta.producer_epoch != epoch:
            return ErrorCode.producer_fenced
        return ErrorCode.none

    def precheck(self, transactional_id: str | None) -> ErrorCode:
        if not transactional_id:
            return ErrorCode.invalid_request
        if not self.store.partitions:
            # No FindCoordinator for a transaction has reached this broker yet.
            return ErrorCode.not_coordinator
        return ErrorCode.none

    # ---- the one way state changes ----------------------------------------------------

    def _lock(self, transactional_id: str) -> asyncio.Lock:
        return self._locks.setdefault(transactional_id, asyncio.Lock())

    async def _decide(
        self,
        transactional_id: str,
        decide: Callable[[TxnMetadata | None, int], TxnDecision],
    ) -> ErrorCode:
        error = self.precheck(transactional_id)
        if error != ErrorCode.none:
            return error
        async with self._lock(transactional_id):
            decision = decide(self.txns.get(transactional_id), now_ms())
            if decision.metadata is not None:
                failed = await self._persist(decision.metadata)
                if failed != ErrorCode.none:
                    return failed
                if decision.metadata.state.preparing:
                    self._complete(decision.metadata)
            return decision.error

    async def _persist(self, meta: TxnMetadata) -> ErrorCode:
        """Write the id's new state and wait until it is committed; then it is the state."""
        try:
            index = self.store.write(meta)
        except Exception as exc:
            return write_error(exc, f"store transaction state of {meta.transactional_id!r}")
        timeout = self.broker.config.int("offsets.commit.timeout.ms") / 1000
        code = await self.broker.replicated(TRANSACTION_STATE_TOPIC, index, timeout)
        if code != ErrorCode.none:
            return ErrorCode.coordinator_not_available
        self.txns[meta.transactional_id] = meta
        return ErrorCode.none

    # ---- markers ------------------------------------------------------------------------

    def _complete(self, meta: TxnMetadata) -> None:
        running = self._completions.get(meta.transactional_id)
        if running is not None and not running.done():
            return
        self._completions[meta.transactional_id] = asyncio.create_task(
            self._write_markers(meta.transactional_id), name=f"kops-txn-{meta.transactional_id}"
        )

    async def _write_markers(self, transactional_id: str) -> None:
        meta = self.txns[transactional_id]
        commit = meta.state is TxnState.PREPARE_COMMIT
        pending = set(meta.partitions)
        while pending:
            for topic, index in sorted(pending):
                if self._write_marker(meta, topic, index, commit):
                    pending.discard((topic, index))
            if pending:
                await asyncio.sleep(_MARKER_RETRY_S)
        while True:
            async with self._lock(transactional_id):
                current = self.txns.get(transactional_id)
                if current != meta:
                    return  # changed meanwhile (cannot happen while preparing; be safe)
                if await self._persist(markers_written(meta, now_ms())) == ErrorCode.none:
                    log.debug(
                        "%s the transaction of %r (%d partitions)",
                        "committed" if commit else "aborted",
                        transactional_id,
                        len(meta.partitions),
                    )
                    return
            await asyncio.sleep(_MARKER_RETRY_S)

    def _write_marker(self, meta: TxnMetadata, topic: str, index: int, commit: bool) -> bool:
        """True once partition (topic, index) has the marker, or never will need it."""
        if self.broker.topic(topic) is None:
            return True  # deleted with its data: nothing left to end
        partition = self.broker.partition(topic, index)
        if partition is None or partition.leader != self.broker.node_id:
            return False
        state_partition = self.broker.partition(
            TRANSACTION_STATE_TOPIC, self.store.partition_for(meta.transactional_id)
        )
        coordinator_epoch = state_partition.leader_epoch if state_partition is not None else 0
        try:
            partition.write_marker(meta.producer_id, meta.producer_epoch, commit, coordinator_epoch)
        except Exception:
            log.warning(
                "could not write the %s marker of %r to %s-%d",
                "commit" if commit else "abort",
                meta.transactional_id,
                topic,
                index,
                exc_info=True,
            )
            return False
        if topic == OFFSETS_TOPIC:
            self.broker.transaction_completed(index, meta.producer_id, commit)
        return True

    # ---- timeouts -------------------------------------------------------------------------

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(self._check_interval_ms / 1000)
            with contextlib.suppress(Exception):
                await self.abort_timed_out()

    async def abort_timed_out(self) -> int:
        """Abort every ongoing transaction past its timeout; returns how many."""
        aborted = 0
        for transactional_id in list(self.txns):
            async with self._lock(transactional_id):
                meta = self.txns.get(transactional_id)
                fenced = abort_timed_out(meta, now_ms()) if meta is not None else None
                if fenced is None:
                    continue
                log.info(
                    "aborting transaction of %r: open longer than its timeout of %d ms",
                    transactional_id,
                    fenced.timeout_ms,
                )
                if await self._persist(fenced) == ErrorCode.none:
                    self._complete(fenced)
                    aborted += 1
        return aborted
