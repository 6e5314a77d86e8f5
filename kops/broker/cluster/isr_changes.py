"""A partition leader's ISR changes, sent to the active controller (AlterPartition).

After Kafka's AlterPartitionManager: the leader submits each proposal that its
``LeaderReplicas`` returns, and hears the outcome once through ``on_done``.
One request is in flight at a time, so a partition is never in two; whatever
is submitted meanwhile goes together in the next one, one request for many
partitions. A newer proposal for a partition replaces one still queued (the
replaced one is answered OPERATION_NOT_ATTEMPTED: it was never sent).

The request goes to the quorum leader as AlterPartition v3, or straight to
``ClusterControl`` when that is this broker. NOT_CONTROLLER and lost
connections are retried with a short backoff, to whichever broker has the role
by then, until the proposal's timeout: then REQUEST_TIMED_OUT.

What an error means for the pending change, as Kafka's
Partition.handleAlterPartitionError reads it: only INELIGIBLE_REPLICA and
OPERATION_NOT_ATTEMPTED say the change was not applied. After any other error
an earlier attempt of the same request may have been (its answer lost with a
connection), so the leader keeps the proposal pending until the metadata shows
the partition's next state: dropping an expand that did commit would let the
high watermark pass the joiner. After REQUEST_TIMED_OUT it may submit the same
proposal again; if the first did commit, the partition epoch has moved on and
the controller refuses the second.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kio.schema.alter_partition import v3
from kio.schema.errors import ErrorCode
from kio.schema.types import BrokerId
from kio.static.primitive import i8, i32, i64

from kops.broker.aio import cancel_and_wait
from kops.broker.cluster.control import ClusterControl
from kops.broker.cluster.controller import ControllerError
from kops.broker.cluster.metadata import PartitionInfo
from kops.broker.cluster.quorum import peer_clients
from kops.broker.cluster.replication import IsrProposal
from kops.protocol.async_client import AsyncBrokerClient
from kops.protocol.errors import RequestError

__all__ = ["AlterPartitionSender", "OnDone"]

log = logging.getLogger("kops.broker.isr_changes")

OnDone = Callable[[ErrorCode, PartitionInfo | None], None]

_RETRY_S = 0.05
# Asks the controller to skip the member epoch check (KIP-903): the leader
# learns no follower's broker epoch from its fetches yet.
_NO_EPOCH = i64(-1)

_Key = tuple[str, int]


@dataclass(slots=True)
class _Item:
    topic: str
    partition: int
    topic_id: uuid.UUID
    leader_epoch: int
    proposal: IsrProposal
    on_done: OnDone
    deadline: float
    answered: bool = False

    def answer(self, code: ErrorCode, info: PartitionInfo | None) -> None:
        if self.answered:
            return
        self.answered = True
        try:
            self.on_done(code, info)
        except Exception:
            # The caller's bug; the other partitions in the request still get their answers.
            log.exception("ISR change callback for %s-%d failed", self.topic, self.partition)


class AlterPartitionSender:
    def __init__(
        self,
        node_id: int,
        voters: Mapping[int, tuple[str, int]],
        control: ClusterControl,
        broker_epoch: Callable[[], int],
        *,
        timeout: float = 5.0,
    ) -> None:
        self._node_id = node_id
        self._control = control
        self._broker_epoch = broker_epoch
        self._timeout = timeout
        self._clients = peer_clients(
            {n: a for n, a in voters.items() if n != node_id},
            client_id=f"kops-alter-partition-{node_id}",
        )
        self._queued: dict[_Key, _Item] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def submit(
        self,
        topic: str,
        partition: int,
        topic_id: str,
        leader_epoch: int,
        proposal: IsrProposal,
        on_done: OnDone,
    ) -> None:
        """Queue a proposal; ``on_done`` is called once with its outcome (on this loop).

        ``topic_id`` is the image's (``TopicInfo.topic_id``); ValueError if it is not a UUID.
        After ``close`` nothing is sent: OPERATION_NOT_ATTEMPTED at once.
        """
        loop = asyncio.get_running_loop()
        item = _Item(
            topic,
            partition,
            uuid.UUID(topic_id),
            leader_epoch,
            proposal,
            on_done,
            loop.time() + self._timeout,
        )
        if self._closed:
            item.answer(ErrorCode.operation_not_attempted, None)
            return
        replaced = self._queued.pop((topic, partition), None)
        self._queued[(topic, partition)] = item
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name=f"kops-alter-partition-{self._node_id}")
        if replaced is not None:
            replaced.answer(ErrorCode.operation_not_attempted, None)

    async def close(self) -> None:
        """Stop sending; proposals in flight or queued get no answer (the broker is stopping)."""
        self._closed = True
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        self._queued.clear()
        for client in self._clients.values():
            await client.close()

    async def _run(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, {}
            try:
                await self._send(batch)
            except Exception:
                log.exception("sending ISR changes for %d partitions failed", len(batch))
                for item in batch.values():
                    item.answer(ErrorCode.unknown_server_error, None)

    async def _send(self, batch: dict[_Key, _Item]) -> None:
        """Until each item of the batch is answered or out of time."""
        loop = asyncio.get_running_loop()
        pending = batch
        while True:
            now = loop.time()
            for key, item in list(pending.items()):
                if now >= item.deadline:
                    item.answer(ErrorCode.request_timed_out, None)
                    del pending[key]
            if not pending:
                return
            leader = self._control.controller_id
            try:
                if leader == self._node_id:
                    pending = await self._decide_here(pending)
                elif leader is not None and (client := self._clients.get(leader)) is not None:
                    remaining = max(item.deadline for item in pending.values()) - now
                    pending = await self._forward(client, pending, max(remaining, 0.1))
            except RequestError as exc:
                log.debug("AlterPartition to the controller %s failed: %s", leader, exc)
            if pending:
                # The controller role is moving: the next attempt goes to whoever has it.
                await asyncio.sleep(_RETRY_S)

    async def _decide_here(self, pending: dict[_Key, _Item]) -> dict[_Key, _Item]:
        retry: dict[_Key, _Item] = {}
        for key, item in pending.items():
            try:
                info = await self._control.alter_partition(
                    self._node_id,
                    self._broker_epoch(),
                    item.topic,
                    item.partition,
                    item.leader_epoch,
                    item.proposal.isr,
                    item.proposal.partition_epoch,
                )
            except ControllerError as exc:
                if exc.error_code == ErrorCode.not_controller:
                    retry[key] = item
                else:
                    item.answer(exc.error_code, None)
            else:
                item.answer(ErrorCode.none, info)
        return retry

    async def _forward(
        self, client: AsyncBrokerClient, pending: dict[_Key, _Item], timeout: float
    ) -> dict[_Key, _Item]:
        by_topic: dict[uuid.UUID, list[_Item]] = {}
        for item in pending.values():
            by_topic.setdefault(item.topic_id, []).append(item)
        request = v3.AlterPartitionRequest(
            broker_id=BrokerId(self._node_id),
            broker_epoch=i64(self._broker_epoch()),
            topics=tuple(
                v3.request.TopicData(
                    topic_id=topic_id,
                    partitions=tuple(_partition_data(item) for item in items),
                )
                for topic_id, items in by_topic.items()
            ),
        )
        response = await client.send(request, timeout=timeout, expect=v3.AlterPartitionResponse)
        if response.error_code == ErrorCode.not_controller:
            return pending
        if response.error_code != ErrorCode.none:
            for item in pending.values():
                item.answer(response.error_code, None)
            return {}
        retry: dict[_Key, _Item] = {}
        by_id = {(item.topic_id, item.partition): (key, item) for key, item in pending.items()}
        for topic in response.topics:
            for answer in topic.partitions:
                if topic.topic_id is None:
                    continue
                found = by_id.pop((topic.topic_id, answer.partition_index), None)
                if found is None:
                    continue
                key, item = found
                if answer.error_code == ErrorCode.not_controller:
                    retry[key] = item
                elif answer.error_code != ErrorCode.none:
                    item.answer(answer.error_code, None)
                else:
                    item.answer(ErrorCode.none, self._info(item, answer))
        for _, item in by_id.values():
            log.warning("AlterPartition answer lacks %s-%d", item.topic, item.partition)
            item.answer(ErrorCode.unknown_server_error, None)
        return retry

    def _info(self, item: _Item, answer: v3.response.PartitionData) -> PartitionInfo:
        """The committed state as answered; the response has no replicas, the image does."""
        known = self._control.image.partitions.get((item.topic, item.partition))
        return PartitionInfo(
            item.topic,
            item.partition,
            known.replicas if known is not None else (),
            tuple(answer.isr),
            answer.leader_id,
            answer.leader_epoch,
            answer.partition_epoch,
        )


def _partition_data(item: _Item) -> v3.request.PartitionData:
    return v3.request.PartitionData(
        partition_index=i32(item.partition),
        leader_epoch=i32(item.leader_epoch),
        new_isr_with_epochs=tuple(
            v3.request.BrokerState(broker_id=BrokerId(r), broker_epoch=_NO_EPOCH)
            for r in item.proposal.isr
        ),
        leader_recovery_state=i8(0),
        partition_epoch=i32(item.proposal.partition_epoch),
    )
