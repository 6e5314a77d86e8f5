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

from kops.broker.handlers import RequestContext

API_KEY = 2
MIN_VERSION = 1
MAX_VERSION = 5

LATEST = -1
EARLIEST = -2


async def handle(ctx: RequestContext, request: object) -> object:
    topics = []
    for topic in request.topics:
        partitions = []
        for wanted in topic.partitions:
            code, offset, timestamp, epoch = ErrorCode.none, -1, -1, -1
            partition = ctx.broker.partition(topic.name, wanted.partition_index)
            if partition is None:
                code = ErrorCode.unknown_topic_or_partition
            elif code := partition.check_leader_epoch(getattr(wanted, "current_leader_epoch", -1)):
                pass
            else:
                plog = partition.log
                epoch = partition.leader_epoch
                if wanted.timestamp == LATEST:
                    offset = plog.high_watermark
                elif wanted.timestamp == EARLIEST:
                    offset = plog.log_start_offset
                elif wanted.timestamp < 0:
                    code = ErrorCode.invalid_request
                else:
                    found = plog.offset_for_timestamp(wanted.timestamp, plog.high_watermark)
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
    return ctx.make(
        "ListOffsetsResponse", throttle_time=datetime.timedelta(0), topics=tuple(topics)
    )
