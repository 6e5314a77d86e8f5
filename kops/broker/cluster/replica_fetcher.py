"""Followers fetch from their leaders: Kafka's ReplicaFetcherManager on the event loop.

One task per leader broker sends one Fetch (v12, replica_id set) for every
partition this broker follows there, waits at most replica.fetch.wait.max.ms
at the leader for data, and hands each partition's answer to that
partition's sans-io ``FollowerFetcher``, which says what to do: append the
leader's batches as they are, truncate a divergent tail (KIP-279), restart
at the leader's log start, move the high watermark. A leader change from the
metadata moves the partition to the new leader's task at once.

A follower's log is only ever written here; the leader learns its progress
from the next fetch's offset, which is what advances the high watermark and
releases acks=all produces.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kio.schema.errors import ErrorCode
from kio.schema.fetch import v12 as fetch_v12
from kio.schema.list_offsets import v4 as list_offsets_v4
from kio.schema.types import BrokerId, TopicName
from kio.static.primitive import i8, i32, i32Timedelta, i64

from kops.broker.aio import cancel_and_wait
from kops.broker.cluster.follower import (
    Append,
    FetchAnswer,
    FetchFrom,
    FollowerAction,
    FollowerConfig,
    FollowerFetcher,
    SetHighWatermark,
    TruncateFullyAndStartAt,
    TruncateTo,
)
from kops.broker.cluster.partition import Partition, TopicPartition, monotonic_ms
from kops.broker.cluster.peer_clients import PeerClients
from kops.broker.log import LogError
from kops.protocol.async_client import AsyncBrokerClient
from kops.protocol.batch import iter_batches
from kops.protocol.errors import RequestError

__all__ = ["ReplicaFetchers"]

log = logging.getLogger("kops.broker.replication")

_LATEST, _EARLIEST = -1, -2


@dataclass(slots=True)
class _Followed:
    partition: Partition
    fetcher: FollowerFetcher
    # The Fetch the fetcher wants sent next, and the one the request in flight carries.
    due: FetchFrom | None = None
    sent: FetchFrom | None = None


def _records_end(records: bytes | memoryview) -> tuple[int | None, int | None]:
    """(last offset + 1, leader epoch) of the last whole batch; (None, None) for none."""
    last = None
    for _pos, header in iter_batches(records):
        last = header
    if last is None:
        return None, None
    return last.last_offset + 1, last.partition_leader_epoch


class ReplicaFetchers:
    def __init__(
        self,
        node_id: int,
        endpoint: Callable[[int], tuple[str, int] | None],
        *,
        backoff_ms: int = 1000,
        max_wait_ms: int = 500,
        max_bytes: int = 1024 * 1024,
        request_timeout: float = 10.0,
    ) -> None:
        self._node_id = node_id
        self._endpoint = endpoint
        self._config = FollowerConfig(node_id, backoff_ms)
        self._max_wait_ms = max_wait_ms
        self._max_bytes = max_bytes
        self._request_timeout = request_timeout
        self._followed: dict[TopicPartition, _Followed] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._wakes: dict[int, asyncio.Event] = {}
        self._clients = PeerClients(endpoint, f"kops-replica-fetcher-{node_id}")

    @property
    def followed(self) -> list[TopicPartition]:
        return sorted(self._followed)

    # ---- what the broker tells it ---------------------------------------------------

    def follow(self, partition: Partition, leader: int | None, leader_epoch: int) -> None:
        """Fetch this replica from `leader` (None: it has none now) as of `leader_epoch`."""
        key = (partition.topic, partition.index)
        now = monotonic_ms()
        followed = self._followed.get(key)
        actions: list[FollowerAction] = []
        if followed is not None and followed.partition is partition:
            try:
                actions = followed.fetcher.leader_changed(leader, leader_epoch, now)
            except ValueError:
                followed = None  # a contradiction in the metadata: start from the log again
            else:
                if actions:
                    # The fetch in flight (if any) belongs to an epoch that is over.
                    followed.sent = None
        if followed is None or followed.partition is not partition:
            followed = _Followed(partition, self._new_fetcher(partition, leader, leader_epoch))
            self._followed[key] = followed
            actions = followed.fetcher.poll(now)
        self._perform(followed, actions, b"")
        if leader is not None:
            self._start(leader)

    def unfollow(self, key: TopicPartition) -> None:
        """Stop fetching (this broker now leads it, or no longer hosts it)."""
        self._followed.pop(key, None)

    async def close(self) -> None:
        await cancel_and_wait(list(self._tasks.values()))
        self._tasks.clear()
        await self._clients.close()

    def _new_fetcher(
        self, partition: Partition, leader: int | None, leader_epoch: int
    ) -> FollowerFetcher:
        return FollowerFetcher(
            self._config,
            leader,
            leader_epoch,
            partition.log_end_offset,
            partition.last_epoch,
            partition.log_start_offset,
            max(
                partition.log_start_offset, min(partition.high_watermark, partition.log_end_offset)
            ),
            partition.end_offset_for_epoch,
        )

    # ---- doing what the fetchers decide -----------------------------------------------

    def _perform(
        self, followed: _Followed, actions: Sequence[FollowerAction], records: bytes | memoryview
    ) -> None:
        partition = followed.partition
        for action in actions:
            if isinstance(action, FetchFrom):
                followed.due = action
                continue
            if isinstance(action, SetHighWatermark):
                partition.set_follower_high_watermark(action.high_watermark)
                continue
            try:
                if isinstance(action, Append):
                    partition.append_as_follower(records)
                elif isinstance(action, TruncateTo):
                    log.info("%s: truncating to %d (leader epoch)", partition, action.end_offset)
                    partition.truncate_to(action.end_offset)
                elif isinstance(action, TruncateFullyAndStartAt):
                    log.info("%s: restarting the log at %d", partition, action.offset)
                    partition.truncate_fully_and_start_at(action.offset)
                more = followed.fetcher.log_updated(
                    partition.log_end_offset,
                    partition.last_epoch,
                    partition.log_start_offset,
                    monotonic_ms(),
                )
            except (LogError, ValueError) as exc:
                # The log and the fetcher disagree: rebuild the fetcher from the log.
                log.error(
                    "%s: %s failed (%s); fetching again from the log end", partition, action, exc
                )
                fetcher = followed.fetcher
                followed.fetcher = self._new_fetcher(
                    partition, fetcher.leader_id, fetcher.leader_epoch
                )
                followed.due = followed.sent = None
                more = followed.fetcher.poll(monotonic_ms())
            self._perform(followed, more, b"")

    # ---- one task per leader ----------------------------------------------------------

    def _start(self, leader: int) -> None:
        self._wakes.setdefault(leader, asyncio.Event()).set()
        task = self._tasks.get(leader)
        if task is None or task.done():
            self._tasks[leader] = asyncio.create_task(
                self._run(leader), name=f"kops-replica-fetcher-{leader}"
            )

    def _of(self, leader: int) -> list[tuple[TopicPartition, _Followed]]:
        return [
            (key, f) for key, f in sorted(self._followed.items()) if f.fetcher.leader_id == leader
        ]

    async def _run(self, leader: int) -> None:
        wake = self._wakes.setdefault(leader, asyncio.Event())
        while True:
            followers = self._of(leader)
            if not followers:
                return
            now = monotonic_ms()
            for _key, f in followers:
                if f.due is None and f.sent is None:
                    self._perform(f, f.fetcher.poll(now), b"")
            ready = [(key, f) for key, f in followers if f.due is not None and f.sent is None]
            if not ready:
                deadlines = [
                    d for _, f in followers if (d := f.fetcher.next_deadline_ms()) is not None
                ]
                delay = max(0.01, (min(deadlines) - now) / 1000) if deadlines else 0.5
                wake.clear()
                try:
                    async with asyncio.timeout(min(delay, 0.5)):
                        await wake.wait()
                except TimeoutError:
                    pass
                continue
            await self._fetch(leader, ready)

    async def _fetch(self, leader: int, ready: list[tuple[TopicPartition, _Followed]]) -> None:
        by_topic: dict[str, list[fetch_v12.request.FetchPartition]] = {}
        for (topic, index), f in ready:
            f.sent, f.due = f.due, None
            assert f.sent is not None
            by_topic.setdefault(topic, []).append(
                fetch_v12.request.FetchPartition(
                    partition=i32(index),
                    current_leader_epoch=i32(f.sent.current_leader_epoch),
                    fetch_offset=i64(f.sent.fetch_offset),
                    last_fetched_epoch=i32(f.sent.last_fetched_epoch),
                    log_start_offset=i64(f.partition.log_start_offset),
                    partition_max_bytes=i32(self._max_bytes),
                )
            )
        request = fetch_v12.FetchRequest(
            replica_id=BrokerId(self._node_id),
            max_wait=i32Timedelta.parse(datetime.timedelta(milliseconds=self._max_wait_ms)),
            min_bytes=i32(1),
            max_bytes=i32(self._max_bytes),
            topics=tuple(
                fetch_v12.request.FetchTopic(topic=TopicName(t), partitions=tuple(ps))
                for t, ps in by_topic.items()
            ),
            forgotten_topics_data=(),
        )
        client = self._clients.get(leader)
        try:
            if client is None:
                raise RequestError(f"broker {leader} has no known address")
            response = await client.send(
                request,
                timeout=self._request_timeout + self._max_wait_ms / 1000,
                expect=fetch_v12.FetchResponse,
            )
        except RequestError as exc:
            log.debug("fetch from broker %d failed: %s", leader, exc)
            now = monotonic_ms()
            for _key, f in ready:
                sent, f.sent = f.sent, None
                self._perform(f, f.fetcher.on_transport_error(now, sent), b"")
            return
        answered: set[TopicPartition] = set()
        for answer in response.responses:
            for data in answer.partitions:
                key: TopicPartition = (str(answer.topic), int(data.partition_index))
                current = self._followed.get(key)
                if current is None or current.sent is None:
                    continue  # unfollowed, or moved to another leader, while the fetch was out
                answered.add(key)
                await self._answer(leader, client, current, data)
        now = monotonic_ms()
        for tp, f in ready:
            if tp not in answered and f.sent is not None and self._followed.get(tp) is f:
                sent, f.sent = f.sent, None
                self._perform(f, f.fetcher.on_transport_error(now, sent), b"")

    async def _answer(
        self,
        leader: int,
        client: AsyncBrokerClient,
        f: _Followed,
        data: fetch_v12.response.PartitionData,
    ) -> None:
        records = data.records or b""
        end, epoch = _records_end(records)
        diverging = None
        if data.diverging_epoch.epoch >= 0 or data.diverging_epoch.end_offset >= 0:
            diverging = (int(data.diverging_epoch.epoch), int(data.diverging_epoch.end_offset))
        high_watermark, log_start = int(data.high_watermark), int(data.log_start_offset)
        if data.error_code == ErrorCode.offset_out_of_range:
            bounds = await self._leader_bounds(client, f.partition)
            if bounds is None:
                sent, f.sent = f.sent, None
                self._perform(f, f.fetcher.on_transport_error(monotonic_ms(), sent), b"")
                return
            log_start, high_watermark = bounds
        answer = FetchAnswer(
            error_code=int(data.error_code),
            high_watermark=high_watermark,
            log_start_offset=log_start,
            records_end_offset=end,
            records_last_epoch=epoch,
            diverging_epoch=diverging,
        )
        sent, f.sent = f.sent, None
        now = monotonic_ms()
        try:
            actions = f.fetcher.on_answer(answer, now, sent)
        except ValueError as exc:
            log.warning("%s: broker %d answered what cannot be (%s)", f.partition, leader, exc)
            actions = f.fetcher.on_transport_error(now, sent)
        self._perform(f, actions, records)

    async def _leader_bounds(
        self, client: AsyncBrokerClient, partition: Partition
    ) -> tuple[int, int] | None:
        """The leader's (log start, log end), asked as Kafka's follower does: ListOffsets."""
        offsets = []
        for timestamp in (_EARLIEST, _LATEST):
            request = list_offsets_v4.ListOffsetsRequest(
                replica_id=BrokerId(self._node_id),
                isolation_level=i8(0),
                topics=(
                    list_offsets_v4.request.ListOffsetsTopic(
                        name=TopicName(partition.topic),
                        partitions=(
                            list_offsets_v4.request.ListOffsetsPartition(
                                partition_index=i32(partition.index),
                                current_leader_epoch=i32(-1),
                                timestamp=i64(timestamp),
                            ),
                        ),
                    ),
                ),
            )
            try:
                response = await client.send(
                    request,
                    timeout=self._request_timeout,
                    expect=list_offsets_v4.ListOffsetsResponse,
                )
            except RequestError:
                return None
            answer = response.topics[0].partitions[0]
            if answer.error_code != ErrorCode.none:
                return None
            offsets.append(int(answer.offset))
        return offsets[0], offsets[1]
