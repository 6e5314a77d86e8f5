"""Cluster metadata on every broker of a quorum, and the controller on its leader.

Every broker applies the committed ``__cluster_metadata`` entries to one
``MetadataImage``. The broker that leads the quorum is also the active
controller: it answers BrokerRegistration and BrokerHeartbeat from the image,
proposes the resulting records as one entry and answers only once that entry
has committed, and fences brokers whose heartbeats stop. Decisions are taken
one at a time (a lock), each from an image that already holds the previous
one's records, so the sans-io ``Controller`` never sees a half-applied state.

A new leader only starts deciding once its epoch's first entry has committed
(``RaftNode.leader_ready``): before that its image may lag the log it
inherited. Until then, and on every other broker, the answer is NOT_CONTROLLER.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable, Mapping, Sequence

from kio.schema.errors import ErrorCode

from kops.broker.aio import cancel_and_wait
from kops.broker.cluster.controller import (
    Controller,
    ControllerConfig,
    ControllerError,
    HeartbeatOutcome,
)
from kops.broker.cluster.metadata import (
    FenceBroker,
    MetadataError,
    MetadataImage,
    MetadataRecord,
    PartitionInfo,
    decode_records,
    encode_records,
)
from kops.broker.cluster.quorum import CommitTimeout, QuorumDriver
from kops.broker.cluster.raft.core import NotLeaderError
from kops.broker.cluster.raft.messages import Entry, Snapshot
from kops.broker.cluster.raft.state import Role

__all__ = ["ClusterControl"]

log = logging.getLogger("kops.broker.controller")


class ClusterControl:
    def __init__(
        self,
        quorum: QuorumDriver,
        config: ControllerConfig,
        *,
        snapshot_bytes: int = 20 * 1024 * 1024,
        commit_timeout: float = 5.0,
        rebalance_interval_ms: int | None = 300_000,
    ) -> None:
        self.quorum = quorum
        self.config = config
        self.image = MetadataImage()
        self._commit_timeout = commit_timeout
        # auto.leader.rebalance.enable / leader.imbalance.check.interval.seconds: None is off.
        self._rebalance_interval_ms = rebalance_interval_ms
        self._next_rebalance_ms = 0
        self._controller: Controller | None = None
        # An entry that timed out may still commit: decide nothing until it is
        # applied or replaced, or a later decision could clash with it.
        self._unsettled = -1
        self._lock = asyncio.Lock()
        self._expiry: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # Connection -> the broker that heartbeats on it (the active controller's view).
        self._heartbeat_connections: dict[Hashable, int] = {}
        self._snapshot_bytes = snapshot_bytes
        self._bytes_since_snapshot = 0
        self._snapshot_due = False
        # The broker's reaction to a new image (open partitions, move leaderships).
        self.on_image: Callable[[MetadataImage], None] | None = None
        self._image_waiters: list[tuple[Callable[[MetadataImage], bool], asyncio.Future[None]]] = []
        quorum.on_apply = self.apply
        quorum.on_role_change = self._role_changed
        quorum.on_snapshot = self._load_snapshot

    async def stop(self) -> None:
        if self._expiry is not None:
            await cancel_and_wait([self._expiry])
            self._expiry = None
        self._controller = None

    # ---- every broker: the image -------------------------------------------------------

    def apply(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            self._bytes_since_snapshot += len(entry.payload)
            try:
                self.image.apply(decode_records(entry.payload), entry.offset)
            except MetadataError:
                # Committed but not appliable: a bug, or a newer kops wrote it. The image
                # skips the entry (apply is atomic) rather than stop applying for good.
                log.exception("metadata entry %d could not be applied; skipped", entry.offset)
        if self._bytes_since_snapshot >= self._snapshot_bytes and not self._snapshot_due:
            # After the driver has finished the actions that applied these entries.
            self._snapshot_due = True
            asyncio.get_running_loop().call_soon(self._take_snapshot)
        self._image_changed()
        self._wake.set()

    def _image_changed(self) -> None:
        if self.on_image is not None:
            try:
                self.on_image(self.image)
            except Exception:
                # The image is right; the broker's reaction failed and is retried on the next.
                log.exception(
                    "applying metadata at offset %d to the broker failed", self.image.offset
                )
        waiting, self._image_waiters = self._image_waiters, []
        for predicate, future in waiting:
            if future.done():
                continue
            if predicate(self.image):
                future.set_result(None)
            else:
                self._image_waiters.append((predicate, future))

    async def wait_for_image(
        self, predicate: Callable[[MetadataImage], bool], timeout: float
    ) -> bool:
        """Wait until this broker's image satisfies `predicate`; False on timeout."""
        if predicate(self.image):
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._image_waiters.append((predicate, future))
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            return False
        return True

    def _take_snapshot(self) -> None:
        self._snapshot_due = False
        end = self.quorum.snapshot(self.image.encode_snapshot())
        if end:
            self._bytes_since_snapshot = 0
            log.info("metadata snapshot at offset %d", end)

    def _load_snapshot(self, snapshot: Snapshot) -> None:
        try:
            self.image = MetadataImage.decode_snapshot(snapshot.state)
        except MetadataError:
            # The store checks snapshots' checksums, so this is a format kops cannot read.
            log.exception("metadata snapshot at %d could not be loaded", snapshot.end_offset)
            return
        self._controller = None
        self._bytes_since_snapshot = 0
        self._image_changed()

    @property
    def controller_id(self) -> int | None:
        """The active controller: the quorum's leader."""
        return self.quorum.leader_id

    # ---- the active controller ---------------------------------------------------------

    def _role_changed(self, role: Role, epoch: int) -> None:
        if role is Role.LEADER:
            if self._expiry is None or self._expiry.done():
                self._expiry = asyncio.create_task(self._run_expiry(), name="kops-controller")
        elif self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
            self._controller = None
        self._wake.set()

    def _active(self) -> Controller:
        """The controller, created on first use in an epoch once the leader is ready."""
        node = self.quorum.node
        if not node.leader_ready or self.quorum.applied_offset <= self._unsettled:
            raise ControllerError("not the active controller", error_code=ErrorCode.not_controller)
        if self._controller is None:
            self._controller = Controller(self.image, self.config)
            # Every session clock starts now (a controller change fences nobody), except the
            # former controller's: it has been silent since this node last fetched from it,
            # which is when its connection counts as lost (an election took longer than the
            # grace, so a dead one is fenced at once; one that handed over just now is not).
            contact = node.leader_contact
            former = {} if contact is None or contact[0] == node.id else dict([contact])
            self._controller.activate(self.quorum.now_ms(), former)
            for broker_id, silent_since in former.items():
                self._controller.connection_lost(broker_id, silent_since)
        return self._controller

    async def _commit(self, records: Sequence[MetadataRecord]) -> None:
        if not records:
            return
        try:
            await self.quorum.propose(encode_records(records), timeout=self._commit_timeout)
        except (NotLeaderError, CommitTimeout) as exc:
            if isinstance(exc, CommitTimeout):
                self._unsettled = exc.offset
            self._controller = None
            raise ControllerError(
                "lost the controller role before the change committed",
                error_code=ErrorCode.not_controller,
            ) from None

    async def register(self, broker_id: int, incarnation_id: str, host: str, port: int) -> int:
        """BrokerRegistration: the broker's epoch once its registration has committed."""
        async with self._lock:
            registration = self._active().register(
                broker_id, incarnation_id, host, port, self.quorum.now_ms()
            )
            await self._commit(registration.records)
        if registration.records:
            log.info(
                "broker %d registered at %s:%d (epoch %d)",
                broker_id,
                host,
                port,
                registration.broker_epoch,
            )
        return registration.broker_epoch

    async def heartbeat(
        self,
        broker_id: int,
        broker_epoch: int,
        metadata_offset: int,
        want_shut_down: bool,
        connection: Hashable | None = None,
    ) -> HeartbeatOutcome:
        """`connection`: what the heartbeat came on, so its closing can be reported
        (connection_closed)."""
        async with self._lock:
            outcome = self._active().heartbeat(
                broker_id, broker_epoch, metadata_offset, self.quorum.now_ms(), want_shut_down
            )
            if connection is not None and outcome.error == ErrorCode.none:
                self._heartbeat_connections[connection] = broker_id
            await self._commit(outcome.records)
        if outcome.records:
            log.info("broker %d is %s", broker_id, "fenced" if outcome.is_fenced else "unfenced")
        return outcome

    def connection_closed(self, connection: Hashable) -> None:
        """A connection closed; if a broker heartbeated on it, its session is cut short
        (Controller.connection_lost) and the expiry loop looks at it now."""
        broker_id = self._heartbeat_connections.pop(connection, None)
        if broker_id is None or broker_id in self._heartbeat_connections.values():
            return  # not a heartbeat connection, or the broker already has another
        controller = self._controller
        if controller is not None and self.quorum.role is Role.LEADER:
            controller.connection_lost(broker_id, self.quorum.now_ms())
            self._wake.set()

    async def decide(self, decision: Callable[[Controller], Sequence[MetadataRecord]]) -> None:
        """Take one decision as the active controller and return once it has committed.

        ControllerError with NOT_CONTROLLER when this broker is not the active
        controller, or with the decision's own code when the controller refuses.
        """
        async with self._lock:
            await self._commit(decision(self._active()))

    async def alter_partition(
        self,
        broker_id: int,
        broker_epoch: int,
        topic: str,
        partition: int,
        leader_epoch: int,
        new_isr: Sequence[int],
        partition_epoch: int,
        *,
        member_epochs: Mapping[int, int] | None = None,
    ) -> PartitionInfo:
        """A leader's AlterPartition: the partition as the image has it once the change committed.

        An unchanged ISR commits nothing and answers with the current state, as Kafka does.
        """
        await self.decide(
            lambda controller: controller.alter_partition(
                broker_id,
                broker_epoch,
                topic,
                partition,
                leader_epoch,
                new_isr,
                partition_epoch,
                member_epochs=member_epochs,
            )
        )
        info = self.image.partitions.get((topic, partition))
        if info is None:
            # Deleted by an entry applied right after ours: nothing left to answer about.
            raise ControllerError(
                f"partition {topic}-{partition} no longer exists",
                error_code=ErrorCode.unknown_topic_or_partition,
            )
        return info

    async def _rebalance_leaders(self, controller: Controller) -> None:
        """auto.leader.rebalance: every interval, each partition whose first replica is back,
        unfenced and in the ISR (caught up) is led by it again, in one entry."""
        interval = self._rebalance_interval_ms
        now = self.quorum.now_ms()
        if interval is None or now < self._next_rebalance_ms:
            return
        self._next_rebalance_ms = now + interval
        records = controller.elect_preferred_leaders()
        if records:
            log.info(
                "moving %d partition leaderships back to their preferred replicas", len(records)
            )
            await self._commit(records)

    async def _run_expiry(self) -> None:
        """Fence brokers whose sessions expire, for as long as this node leads."""
        while self.quorum.role is Role.LEADER:
            self._wake.clear()
            delay = 0.5
            with contextlib.suppress(ControllerError):
                async with self._lock:
                    controller = self._active()
                    for entry in controller.expire(self.quorum.now_ms()):
                        fenced = [r.broker_id for r in entry if isinstance(r, FenceBroker)]
                        log.warning(
                            "fencing broker %s: no heartbeat within %d ms",
                            fenced,
                            self.config.session_timeout_ms,
                        )
                        await self._commit(entry)
                    await self._rebalance_leaders(controller)
                    deadline = controller.next_deadline_ms()
                    if deadline is not None:
                        delay = max(0.01, (deadline - self.quorum.now_ms()) / 1000)
            # asyncio.timeout rather than wait_for (see QuorumDriver._run_timers).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, 0.5)):
                    await self._wake.wait()
