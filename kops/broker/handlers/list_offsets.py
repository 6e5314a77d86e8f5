"""ListOffsets (key 2): v1-11.

- timestamp -1 (latest) answers the high watermark, with isolation_level 1
  (READ_COMMITTED, v2+) the last stable offset (KIP-98: no undecided
  transaction starts below it), and to a follower (replica_id >= 0) the log
  end offset, as Kafka's; -2 (earliest) the log start offset.
- Any other timestamp finds the first record whose timestamp is at or after
  it (the time index finds the batch; only that batch is decoded), never at
  or beyond the high watermark (READ_COMMITTED: the last stable offset; -3
  too); none gives offset -1. v1 has no isolation level: READ_UNCOMMITTED.
- v4+: leader_epoch; current_leader_epoch is checked.
- v7+: -3 (max timestamp, KIP-734) answers the offset and timestamp of the
  record with the largest timestamp, the earliest one on ties (Kafka 3.8+,
  KAFKA-16310; see kops.broker.log.max_timestamp); offset and timestamp -1
  for an empty partition.
- v8+: -4 (earliest local, KIP-405): the log start offset, as Kafka answers
  without tiered storage.
- v9+: -5 (latest tiered, KIP-1005): offset and timestamp -1, leader epoch
  -1, Kafka's answer for a topic without tiered storage.
- v10+: the timeout for remote-storage lookups is ignored (none are made).
- v11+: -6 (earliest pending upload, KIP-1023): offset -1, as Kafka answers
  without tiered storage.
- A negative timestamp that is none of these, or one the request's version
  predates, gets UNSUPPORTED_VERSION for that partition (Kafka's
  ReplicaManager.timestampMinSupportedVersion).
- No offset found: offset, timestamp and leader epoch -1 (Kafka's empty answer).
- An offset found is answered with the partition's current leader epoch (Kafka
  gives the epoch of the batch holding it; they differ only for records
  written under an earlier leader).
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.list_offsets import v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11
from kio.schema.list_offsets.v1.request import ListOffsetsPartition as ListOffsetsPartitionV1
from kio.schema.list_offsets.v2.request import ListOffsetsPartition as ListOffsetsPartitionV2
from kio.schema.list_offsets.v3.request import ListOffsetsPartition as ListOffsetsPartitionV3

from kops.broker.cluster.partition import Partition
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 2
MIN_VERSION = 1
MAX_VERSION = 11

Request = (
    v1.ListOffsetsRequest
    | v2.ListOffsetsRequest
    | v3.ListOffsetsRequest
    | v4.ListOffsetsRequest
    | v5.ListOffsetsRequest
    | v6.ListOffsetsRequest
    | v7.ListOffsetsRequest
    | v8.ListOffsetsRequest
    | v9.ListOffsetsRequest
    | v10.ListOffsetsRequest
    | v11.ListOffsetsRequest
)
Response = (
    v1.ListOffsetsResponse
    | v2.ListOffsetsResponse
    | v3.ListOffsetsResponse
    | v4.ListOffsetsResponse
    | v5.ListOffsetsResponse
    | v6.ListOffsetsResponse
    | v7.ListOffsetsResponse
    | v8.ListOffsetsResponse
    | v9.ListOffsetsResponse
    | v10.ListOffsetsResponse
    | v11.ListOffsetsResponse
)
REPLY: Reply[Response] = Reply(API_KEY)

READ_COMMITTED = 1

LATEST = -1
EARLIEST = -2
MAX_TIMESTAMP = -3
EARLIEST_LOCAL = -4
LATEST_TIERED = -5
EARLIEST_PENDING_UPLOAD = -6

# The first request version that may ask for each special timestamp.
SPECIAL_SINCE = {
    LATEST: 1,
    EARLIEST: 1,
    MAX_TIMESTAMP: 7,
    EARLIEST_LOCAL: 8,
    LATEST_TIERED: 9,
    EARLIEST_PENDING_UPLOAD: 11,
}

# (error, offset, timestamp, leader epoch)
Answer = tuple[ErrorCode, int, int, int]
NOT_FOUND: Answer = (ErrorCode.none, -1, -1, -1)
WITHOUT_EPOCH = (ListOffsetsPartitionV1, ListOffsetsPartitionV2, ListOffsetsPartitionV3)


async def handle(ctx: RequestContext, request: Request) -> Response:
    # v1 predates isolation levels (KIP-98): it reads uncommitted.
    level = 0 if isinstance(request, v1.ListOffsetsRequest) else request.isolation_level
    read_committed = level == READ_COMMITTED
    topics = []
    for topic in request.topics:
        partitions = []
        for wanted in topic.partitions:
            # v4+ partitions carry the epoch the client knows (KIP-320); -1 skips the check.
            known = -1 if isinstance(wanted, WITHOUT_EPOCH) else wanted.current_leader_epoch
            code, offset, timestamp, epoch = _answer(
                ctx, topic.name, wanted.partition_index, wanted.timestamp, known, read_committed
            )
            if code == ErrorCode.none and request.replica_id >= 0 and wanted.timestamp == LATEST:
                # A follower re-syncing after OFFSET_OUT_OF_RANGE needs the log end, not the HW.
                found = ctx.broker.leader_partition(topic.name, wanted.partition_index)
                if not isinstance(found, ErrorCode):
                    offset = found.log_end_offset
            partitions.append(
                ctx.make(
                    "ListOffsetsPartitionResponse",
                    partition_index=wanted.partition_index,
                    error_code=code,
                    timestamp=timestamp,
                    offset=offset,
                    leader_epoch=epoch,
                )
            )
        topics.append(
            ctx.make("ListOffsetsTopicResponse", name=topic.name, partitions=tuple(partitions))
        )
    return REPLY(ctx, throttle_time=datetime.timedelta(0), topics=tuple(topics))


def _answer(
    ctx: RequestContext,
    topic: str,
    index: int,
    timestamp: int,
    current_epoch: int,
    read_committed: bool = False,
) -> Answer:
    if timestamp < 0 and ctx.api_version < SPECIAL_SINCE.get(timestamp, MAX_VERSION + 1):
        return ErrorCode.unsupported_version, -1, -1, -1
    found = ctx.broker.leader_partition(topic, index, current_epoch)
    if isinstance(found, ErrorCode):
        return found, -1, -1, -1
    return _lookup(found, timestamp, read_committed)


def _lookup(partition: Partition, timestamp: int, read_committed: bool = False) -> Answer:
    epoch = partition.leader_epoch
    if timestamp == LATEST:
        latest = partition.last_stable_offset if read_committed else partition.high_watermark
        return ErrorCode.none, latest, -1, epoch
    if timestamp in (EARLIEST, EARLIEST_LOCAL):
        return ErrorCode.none, partition.log_start_offset, -1, epoch
    if timestamp in (LATEST_TIERED, EARLIEST_PENDING_UPLOAD):
        return NOT_FOUND  # no tiered storage
    if timestamp == MAX_TIMESTAMP:
        found = partition.max_timestamp(read_committed=read_committed)
    else:
        found = partition.offset_for_timestamp(timestamp, read_committed=read_committed)
    if found is None:
        return NOT_FOUND
    return ErrorCode.none, found[0], found[1], epoch


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
