"""The transaction coordinator: InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn.

The rules are :mod:`kops.broker.txn.state`'s; this module does their I/O, per
transactional id one at a time: persist the new state to `__transaction_state`,
answer, and for a transaction that is to commit or abort write its markers to
every partition it touched (then record it complete). Markers in
`__consumer_offsets` also tell the group coordinator to make the transaction's
offsets visible, or drop them.

Ownership (Kafka's TransactionStateManager): a coordinator serves exactly the
transactional ids whose `__transaction_state` partition its broker leads. The
broker tells it when it becomes a partition's leader (`elect`: replay the
partition; a transaction found preparing gets its markers again, a marker being
idempotent for its epoch, and one found ongoing is aborted once its timeout
passes) and when it stops (`resign`: forget those ids and stop their markers;
the new leader's coordinator resumes them). Requests for an id it does not own
get NOT_COORDINATOR, and the client looks the coordinator up again. A state
change is the state only once the partition's ISR has it, so whichever replica
leads next loads it. A single broker owns every partition; it creates the topic
on first use. The leader epoch of the state partition at its load is the
coordinator epoch the markers carry, and a write that finds the partition
reloaded or gone meanwhile answers NOT_COORDINATOR.

Markers: kops.broker.txn.markers decides which are outstanding and where each
goes (this broker's own partitions are written here, others are sent to their
leader with WriteTxnMarkers, kops.broker.txn.marker_io), round after round
with leadership refreshed, until every partition has its marker in its ISR;
only then is the transaction recorded complete.
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
from kops.broker.cluster.partition import Partition
from kops.broker.cluster.view import ClusterView
from kops.broker.groups.storage import OFFSETS_TOPIC, write_error
from kops.broker.txn.log import TRANSACTION_STATE_TOPIC, TransactionLog
from kops.broker.txn.marker_io import MarkerChannel, write_here
from kops.broker.txn.markers import MarkerOutcome, MarkerRound, OutstandingMarkers
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

# Between rounds of markers that could not all be written (a partition is briefly
# leaderless, or its leader unreachable): the transaction stays preparing meanwhile.
_MARKER_RETRY_S = 0.5


def now_ms() -> int:
    # Wall-clock: transaction start times are persisted and compared after a restart.
    return int(time.time() * 1000)


class TxnBroker(ClusterView, Protocol):
    def allocate_producer_id(self) -> int: ...

    async def replicated(self, topic: str, index: int, timeout: float) -> ErrorCode: ...

    def leader_partition(
        self, topic: str, index: int, current_leader_epoch: int = -1
    ) -> Partition | ErrorCode: ...

    def leader_of(self, topic: str, index: int) -> int | None:
        """The partition's leader as this broker knows it; None while it has none."""
        ...

    def transaction_completed(self, index: int, producer_id: int, commit: bool) -> None:
        """A marker reached `__consumer_offsets` partition `index` (the groups' part)."""
        ...


class TransactionCoordinator:
    def __init__(self, broker: TxnBroker, channel: MarkerChannel | None = None) -> None:
        self.broker = broker
        # WriteTxnMarkers to other brokers' leaders; None on a single broker (it leads all).
        self.channel = channel
        self.store = TransactionLog(broker)
        # The ids of owned partitions and no others.
        self.txns: dict[str, TxnMetadata] = {}
        # Owned state partitions: index -> its leader epoch when this coordinator loaded it.
        self.owned: dict[int, int] = {}
        self.max_timeout_ms = broker.config.int("transaction.max.timeout.ms")
        self._check_interval_ms = broker.config.int(
            "transaction.abort.timed.out.transaction.cleanup.interval.ms"
        )
        self._locks: dict[str, asyncio.Lock] = {}
        self._completions: dict[str, asyncio.Task[None]] = {}
        # Completions of ids given up (resign), until their cancellation has run.
        self._retired: set[asyncio.Task[None]] = set()
        self._expiry_due = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loading_all = False

    # ---- lifecycle ------------------------------------------------------------------

    async def start(self, *, own_all: bool = True) -> None:
        """`own_all`: a single broker, leading all of the state topic (once it exists).
        Otherwise the broker elects partitions as the metadata makes it their leader."""
        if own_all and self.store.exists():
            self._own_all()
        self._tasks.append(asyncio.create_task(self._expiry_loop(), name="kops-txn-expiry"))

    async def stop(self) -> None:
        await cancel_and_wait([*self._tasks, *self._completions.values(), *self._retired])
        self._completions.clear()
        if self.channel is not None:
            await self.channel.close()

    def ensure_topic(self) -> None:
        """A single broker's FindCoordinator for a transactional id: the state topic
        exists from then on, and this coordinator owns all of it."""
        if not self.store.partitions:
            self.store.ensure()
            self._own_all()

    def _own_all(self) -> None:
        self._loading_all = True
        try:
            for index in range(self.store.partitions):
                self.elect(index)
        finally:
            self._loading_all = False
        log.info(
            "loaded %d transactional ids from %s (%d partitions)",
            len(self.txns),
            TRANSACTION_STATE_TOPIC,
            self.store.partitions,
        )

    # ---- ownership -------------------------------------------------------------------

    def set_partition_count(self, n: int) -> None:
        """The state topic has `n` partitions (a cluster member learns it from the metadata)."""
        if n == self.store.partitions:
            return
        if self.store.partitions or n <= 0:
            # Another count would place ids in other partitions than their records.
            log.warning(
                "ignoring %s partition count %d: it is %d and cannot change",
                TRANSACTION_STATE_TOPIC,
                n,
                self.store.partitions,
            )
            return
        self.store.partitions = n

    def owns(self, transactional_id: str) -> bool:
        return (
            bool(self.store.partitions) and self.store.partition_for(transactional_id) in self.owned
        )

    def elect(self, index: int) -> int:
        """This broker now leads state partition `index`: load its ids and resume what
        they were doing. Returns how many were loaded; a partition already loaded under
        its current leader epoch is left as it is."""
        partition = self.broker.partition(TRANSACTION_STATE_TOPIC, index)
        if partition is None or not 0 <= index < self.store.partitions:
            log.error("cannot load %s-%d: not hosted here", TRANSACTION_STATE_TOPIC, index)
            return 0
        epoch = partition.leader_epoch
        if self.owned.get(index) == epoch:
            return 0
        # Led again under a new epoch: what was loaded before may be stale.
        self.resign(index)
        loaded = 0
        for transactional_id, meta in self.store.load_partition(index).items():
            if self.store.partition_for(transactional_id) != index:
                log.warning(
                    "%s-%d holds misplaced id %r", TRANSACTION_STATE_TOPIC, index, transactional_id
                )
                continue
            self.txns[transactional_id] = meta
            loaded += 1
        self.owned[index] = epoch
        resumed = 0
        for transactional_id in self._ids_of(index):
            meta = self.txns[transactional_id]
            if meta.state.preparing:
                self._complete(meta)
                resumed += 1
            elif meta.state is TxnState.ONGOING:
                # Its producer may be gone with the old coordinator: check the timeout now.
                self._expiry_due.set()
        log.log(
            logging.DEBUG if self._loading_all else logging.INFO,
            "loaded %d transactional ids from %s-%d (leader epoch %d, %d to complete)",
            loaded,
            TRANSACTION_STATE_TOPIC,
            index,
            epoch,
            resumed,
        )
        return loaded

    def resign(self, index: int) -> int:
        """This broker no longer leads state partition `index`: forget its ids and stop
        their markers (the new coordinator resumes them). Returns how many."""
        if self.owned.pop(index, None) is None:
            return 0
        doomed = self._ids_of(index)
        for transactional_id in doomed:
            del self.txns[transactional_id]
            task = self._completions.pop(transactional_id, None)
            if task is not None and not task.done():
                task.cancel()
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)
        log.info(
            "unloaded %d transactional ids of %s-%d", len(doomed), TRANSACTION_STATE_TOPIC, index
        )
        return len(doomed)

    def _ids_of(self, index: int) -> list[str]:
        return [t for t in self.txns if self.store.partition_for(t) == index]

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
        """TxnOffsetCommit's fencing: the producer must be the id's current one.

        Only an id this coordinator owns can be checked here. In a cluster the group's
        coordinator is often another broker than the transaction's; there (as in
        Kafka) the offsets partition's producer state refuses an epoch older than
        the producer's, and the transaction's abort marker ends whatever a fenced
        producer still wrote."""
        if not self.owns(transactional_id):
            return ErrorCode.none
        meta = self.txns.get(transactional_id)
        if meta is None or meta.producer_id != producer_id:
            return ErrorCode.invalid_producer_id_mapping
        if meta.producer_epoch != epoch:
            return ErrorCode.producer_fenced
        return ErrorCode.none

    def precheck(self, transactional_id: str | None) -> ErrorCode:
        if not transactional_id:
            return ErrorCode.invalid_request
        if not self.owns(transactional_id):
            # Another broker leads its state partition (or, on a single broker, no
            # FindCoordinator for a transaction has created the topic yet).
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
            # Ownership may have moved while this request waited for the lock.
            error = self.precheck(transactional_id)
            if error != ErrorCode.none:
                return error
            decision = decide(self.txns.get(transactional_id), now_ms())
            if decision.metadata is not None:
                failed = await self._persist(decision.metadata)
                if failed != ErrorCode.none:
                    return failed
                if decision.metadata.state.preparing:
                    self._complete(decision.metadata)
            return decision.error

    async def _persist(self, meta: TxnMetadata) -> ErrorCode:
        """Write the id's new state and wait until its ISR has it; then it is the state.

        As Kafka's appendTransactionToLog: a lost leadership is NOT_COORDINATOR (the
        client finds the new one), a slow ISR COORDINATOR_NOT_AVAILABLE (it retries)."""
        index = self.store.partition_for(meta.transactional_id) if self.store.partitions else -1
        epoch = self.owned.get(index)
        if epoch is None:
            return ErrorCode.not_coordinator
        try:
            self.store.write(meta)
        except Exception as exc:
            return write_error(exc, f"store transaction state of {meta.transactional_id!r}")
        timeout = self.broker.config.int("offsets.commit.timeout.ms") / 1000
        code = await self.broker.replicated(TRANSACTION_STATE_TOPIC, index, timeout)
        if self.owned.get(index) != epoch or code == ErrorCode.not_leader_or_follower:
            # Another coordinator has (or will have) this partition: the log is its state.
            return ErrorCode.not_coordinator
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
        index = self.store.partition_for(transactional_id)
        coordinator_epoch = self.owned[index]
        outstanding = OutstandingMarkers(meta.partitions)
        rounds = 0
        while True:
            plan = outstanding.plan(
                self.broker.node_id,
                self.broker.leader_of,
                lambda topic: self.broker.topic(topic) is not None,
            )
            answers = await self._send_markers(meta, commit, coordinator_epoch, plan)
            for tp, code in answers.items():
                if outstanding.answered(tp, code) is MarkerOutcome.UNEXPECTED:
                    log.warning(
                        "the %s marker of %r in %s-%d failed with %s; retrying",
                        "commit" if commit else "abort",
                        transactional_id,
                        *tp,
                        code.name,
                    )
            rounds += 1
            if outstanding.done:
                break
            # At INFO once per transaction: a failover can take several rounds.
            log.log(
                logging.INFO if rounds == 1 else logging.DEBUG,
                "%s markers of %r outstanding in %d partitions after round %d (%s); retrying",
                "commit" if commit else "abort",
                transactional_id,
                len(outstanding.pending),
                rounds,
                ", ".join(
                    f"{t}-{p}: {answers.get((t, p), ErrorCode.none).name}"
                    for t, p in sorted(outstanding.pending)
                ),
            )
            await asyncio.sleep(_MARKER_RETRY_S)
        while self.owned.get(index) == coordinator_epoch:
            async with self._lock(transactional_id):
                current = self.txns.get(transactional_id)
                if current != meta:
                    return  # changed meanwhile (cannot happen while preparing; be safe)
                code = await self._persist(markers_written(meta, now_ms()))
                if code == ErrorCode.none:
                    log.debug(
                        "%s the transaction of %r (%d partitions, %d rounds of markers)",
                        "committed" if commit else "aborted",
                        transactional_id,
                        len(meta.partitions),
                        rounds,
                    )
                    return
                if code == ErrorCode.not_coordinator:
                    return  # the next coordinator completes it from the log
            await asyncio.sleep(_MARKER_RETRY_S)

    async def _send_markers(
        self, meta: TxnMetadata, commit: bool, coordinator_epoch: int, plan: MarkerRound
    ) -> dict[TopicPartition, ErrorCode]:
        """One round: every outstanding marker written or sent at once; each one's answer."""
        args = (meta.producer_id, meta.producer_epoch, commit, coordinator_epoch)
        jobs = []
        if plan.local:
            jobs.append(write_here(self.broker, *args, plan.local))
        for broker_id, partitions in plan.remote.items():
            if self.channel is not None:
                jobs.append(self.channel.send(broker_id, *args, partitions))
        answers: dict[TopicPartition, ErrorCode] = dict.fromkeys(
            plan.leaderless, ErrorCode.leader_not_available
        )
        if self.channel is None:
            answers.update(
                (tp, ErrorCode.not_leader_or_follower)
                for partitions in plan.remote.values()
                for tp in partitions
            )
        for result in await asyncio.gather(*jobs):
            answers.update(result)
        return answers

    # ---- timeouts -------------------------------------------------------------------------

    async def _expiry_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._check_interval_ms / 1000):
                    await self._expiry_due.wait()
            self._expiry_due.clear()
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
