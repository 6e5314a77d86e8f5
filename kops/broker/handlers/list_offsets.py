"""ListOffsets (key 2): v1-5.

- timestamp -1 (latest) answers the high watermark (the last stable offset is
  the same: kops has no transactions); -2 (earliest) the log start offset.
- Any other timestamp finds the first record whose timestamp is at or after
  it (the time index finds the batch; only that batch is decoded), never at
  or beyond the high watermark; none gives offset -1.
- v4+: leader_epoch; current_leader_epoch is checked.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.list_offsets import v1, v2, v3, v4, v5
from kio.schema.list_offsets.v4.request import ListOffsetsPartition as ListOffsetsPartitionV4
from kio.schema.list_offsets.v5.request import ListOffsetsPartition as ListOffsetsPartitionV5

from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 2
MIN_VERSION = 1
MAX_VERSION = 5

Request = (
    v1.ListOffsetsRequest
    | v2.ListOffsetsRequest
    | v3.ListOffsetsRequest
    | v4.ListOffsetsRequest
    | v5.ListOffsetsRequest
)
Response = (
    v1.ListOffsetsResponse
    | v2.ListOffsetsResponse
    | v3.ListOffsetsResponse
    | v4.ListOffsetsResponse
    | v5.ListOffsetsResponse
)
REPLY: Reply[Response] = Reply(API_KEY)

LATEST = -1
EARLIEST = -2


async def handle(ctx: RequestContext, request: Request) -> Response:
    topics = []
    for topic in request.topics:
        partitions = []
        for wanted in topic.partitions:
            code, offset, timestamp, epoch = ErrorCode.none, -1, -1, -1
            partition = ctx.broker.partition(topic.name, wanted.partition_index)
            if partition is None:
                code = ErrorCode.unknown_topic_or_partition
            elif code := partition.check_leader_epoch(_current_leader_epoch(wanted)):
                pass
            else:
                epoch = partition.leader_epoch
                if wanted.timestamp == LATEST:
                    offset = partition.high_watermark
                elif wanted.timestamp == EARLIEST:
                    offset = partition.log_start_offset
                elif wanted.timestamp < 0:
                    code = ErrorCode.invalid_request
                else:
                    found = partition.offset_for_timestamp(wanted.timestamp)
                    if found is not None:
                        offset, timestamp = found
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


def _current_leader_epoch(wanted: object) -> int:
    # v4+ partitions carry the epoch the client knows (KIP-320); -1 skips the check.
    if isinstance(wanted, (ListOffsetsPartitionV4, ListOffsetsPartitionV5)):
        return wanted.current_leader_epoch
    return -1


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
