"""Fetch (key 1): v4-12.

- Long polling: when fewer than min_bytes are ready, the request parks in
  the broker's fetch purgatory under every partition it asked for, and an
  append to any of them re-checks it; it answers at max_wait otherwise.
- Limits: max_bytes for the response and partition_max_bytes per partition,
  except that the first partition with data always returns at least one
  whole batch (KIP-74).
- Consumers read up to the high watermark; bytes come from the segment files
  without decoding records.
- isolation_level 1 (READ_COMMITTED, KIP-98): consumers read up to the last
  stable offset instead, and aborted_transactions lists the aborted
  transactions (producer id, first offset) overlapping [fetch offset, end of
  the batches returned), an empty list when none (and always for
  READ_UNCOMMITTED, where Kafka answers null). last_stable_offset is the
  partition's real one at every isolation level.
- Fetch sessions (KIP-227) are never opened: session_id 0 means every fetch is
  a full fetch, which is always legal.
- v9+: current_leader_epoch is checked (FENCED_LEADER_EPOCH /
  UNKNOWN_LEADER_EPOCH).
- v11: rack_id is ignored; preferred_read_replica is always -1.
- v12 (flexible): topic ids are not used (v13+). A fetch of
  ``__cluster_metadata`` is the controller quorum's replication (KRaft) and
  goes to the quorum's handler.
- A follower's fetch (replica_id >= 0) reads up to the log end, not the high
  watermark; with v12 its last_fetched_epoch is checked against the leader's
  epochs and a divergence answered with diverging_epoch and no records
  (KIP-279), and its fetch offsets move the high watermark and the ISR
  (kops.broker.cluster.replication). Consumers' last_fetched_epoch is not
  checked (they validate with OffsetForLeaderEpoch, as librdkafka does).
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.fetch import v4, v5, v6, v7, v8, v9, v10, v11, v12
from kio.schema.fetch.v9.request import FetchPartition as FetchPartitionV9
from kio.schema.fetch.v10.request import FetchPartition as FetchPartitionV10
from kio.schema.fetch.v11.request import FetchPartition as FetchPartitionV11
from kio.schema.fetch.v12.request import FetchPartition as FetchPartitionV12

from kops.broker.cluster.partition import Partition
from kops.broker.cluster.raft.wire import METADATA_TOPIC
from kops.broker.handlers import ApiHandler, Reply, RequestContext
from kops.broker.handlers.quorum import serve_peer
from kops.broker.purgatory import DelayedOperation
from kops.protocol.batch import batches_end_offset

API_KEY = 1
READ_COMMITTED = 1
MIN_VERSION = 4
MAX_VERSION = 12

Request = (
    v4.FetchRequest
    | v5.FetchRequest
    | v6.FetchRequest
    | v7.FetchRequest
    | v8.FetchRequest
    | v9.FetchRequest
    | v10.FetchRequest
    | v11.FetchRequest
    | v12.FetchRequest
)
Response = (
    v4.FetchResponse
    | v5.FetchResponse
    | v6.FetchResponse
    | v7.FetchResponse
    | v8.FetchResponse
    | v9.FetchResponse
    | v10.FetchResponse
    | v11.FetchResponse
    | v12.FetchResponse
)
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    if isinstance(request, v12.FetchRequest) and any(
        t.topic == METADATA_TOPIC for t in request.topics
    ):
        response = await serve_peer(ctx, request)
        assert isinstance(response, v12.FetchResponse)
        return response
    delay = max(0, int(request.max_wait.total_seconds() * 1000)) / 1000
    fetch = DelayedFetch(ctx, request, delay)
    keys = [(t.topic, p.partition) for t in request.topics for p in t.partitions]
    if delay <= 0:
        # max_wait 0: answer with whatever the first read found.
        fetch.try_complete() or fetch.force_complete()
    elif not ctx.broker.fetches.try_complete_else_watch(fetch, keys):
        await fetch.wait()
    # Counted once, for the reads that are answered: re-checks while parked read too.
    for partition, size in fetch.sent:
        partition.bytes_out += size
    return REPLY(
        ctx,
        throttle_time=datetime.timedelta(0),
        error_code=ErrorCode.none,
        session_id=0,
        responses=tuple(fetch.responses),
    )


class DelayedFetch(DelayedOperation):
    """Satisfied once min_bytes are readable or a partition has an error."""

    def __init__(self, ctx: RequestContext, request: Request, delay: float) -> None:
        super().__init__(delay)
        self.ctx = ctx
        self.request = request
        self.responses: list[object] = []
        self.sent: list[tuple[Partition, int]] = []
        # A follower's fetch offsets are its progress: counted once, on arrival.
        self._progress_recorded = False

    def _read(self) -> tuple[int, bool]:
        record = not self._progress_recorded
        self._progress_recorded = True
        self.responses, self.sent, total, had_error = _read_all(self.ctx, self.request, record)
        return total, had_error

    def try_complete(self) -> bool:
        total, had_error = self._read()
        if total >= self.request.min_bytes or had_error:
            return self.force_complete()
        return False

    def on_expiration(self) -> None:
        self._read()

    def on_complete(self) -> None:
        pass


def _read_all(
    ctx: RequestContext, request: Request, record_progress: bool = False
) -> tuple[list[object], list[tuple[Partition, int]], int, bool]:
    """The responses, the bytes read from each partition, their total, and whether a
    partition had an error (or, for a follower, a diverging epoch to answer at once)."""
    broker = ctx.broker
    replica_id = request.replica_id
    flexible = isinstance(request, v12.FetchRequest)
    # Followers always read uncommitted, up to the log end.
    read_committed = replica_id < 0 and request.isolation_level == READ_COMMITTED
    budget: int = request.max_bytes
    total = 0
    had_error = False
    first_data = True
    responses = []
    sent: list[tuple[Partition, int]] = []
    for topic in request.topics:
        partitions = []
        for wanted in topic.partitions:
            code = ErrorCode.none
            records: bytes | memoryview = b""
            hw = lso = log_start = -1
            aborted: tuple[object, ...] = ()
            diverging: tuple[int, int] | None = None
            partition: Partition | None = None
            found = broker.leader_partition(
                topic.topic, wanted.partition, _current_leader_epoch(wanted)
            )
            if isinstance(found, ErrorCode):
                code = found
            else:
                partition = found
                hw, log_start = partition.high_watermark, partition.log_start_offset
                if replica_id >= 0:
                    last_epoch = wanted.last_fetched_epoch if flexible else -1  # type: ignore[union-attr]
                    got = partition.read_for_follower(
                        wanted.fetch_offset, last_epoch, min(wanted.partition_max_bytes, budget)
                    )
                    code, records, diverging = got.error, got.records, got.diverging_epoch
                    if record_progress and code == ErrorCode.none and diverging is None:
                        partition.follower_fetched(replica_id, wanted.fetch_offset)
                        hw = partition.high_watermark
                elif budget > 0 or first_data:
                    read = partition.read(
                        wanted.fetch_offset,
                        min(wanted.partition_max_bytes, max(budget, 0)),
                        min_one_batch=first_data,
                        read_committed=read_committed,
                    )
                    code, records = read.error, read.records
                    if read_committed and records:
                        aborted = _aborted(ctx, partition, wanted.fetch_offset, records)
                lso = partition.last_stable_offset
            if code != ErrorCode.none or diverging is not None:
                had_error = True
            if records:
                assert partition is not None
                sent.append((partition, len(records)))
                first_data = False
                budget -= len(records)
                total += len(records)
            extra = {}
            if diverging is not None:
                extra["diverging_epoch"] = ctx.make(
                    "EpochEndOffset", epoch=diverging[0], end_offset=diverging[1]
                )
            partitions.append(
                ctx.make(
                    "PartitionData",
                    partition_index=wanted.partition,
                    error_code=code,
                    high_watermark=hw,
                    last_stable_offset=lso,
                    log_start_offset=log_start,
                    aborted_transactions=aborted,
                    preferred_read_replica=-1,
                    records=records,
                    **extra,
                )
            )
        responses.append(
            ctx.make("FetchableTopicResponse", topic=topic.topic, partitions=tuple(partitions))
        )
    return responses, sent, total, had_error


def _aborted(
    ctx: RequestContext, partition: Partition, fetch_offset: int, records: bytes | memoryview
) -> tuple[object, ...]:
    """The aborted transactions a read_committed consumer must skip in `records`."""
    found = partition.aborted_transactions(fetch_offset, batches_end_offset(records))
    return tuple(
        ctx.make("AbortedTransaction", producer_id=producer_id, first_offset=first_offset)
        for producer_id, first_offset in found
    )


def _current_leader_epoch(wanted: object) -> int:
    # v9+ partitions carry the epoch the client knows (KIP-320); -1 skips the check.
    if isinstance(
        wanted, (FetchPartitionV9, FetchPartitionV10, FetchPartitionV11, FetchPartitionV12)
    ):
        return wanted.current_leader_epoch
    return -1


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
