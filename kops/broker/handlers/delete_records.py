"""DeleteRecords (key 21): v0-2.

- Advances the log start offset; whole segments below it are removed.
- offset -1 means the high watermark; beyond it is OFFSET_OUT_OF_RANGE.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode

from kops.broker.handlers import RequestContext

API_KEY = 21
MIN_VERSION = 0
MAX_VERSION = 2


async def handle(ctx: RequestContext, request: object) -> object:
    topics = []
    for topic in request.topics:
        results = []
        for wanted in topic.partitions:
            code, low = ErrorCode.none, -1
            partition = ctx.broker.partition(topic.name, wanted.partition_index)
            if partition is None:
                code = ErrorCode.unknown_topic_or_partition
            else:
                plog = partition.log
                target = plog.high_watermark if wanted.offset == -1 else wanted.offset
                if target < 0 or target > plog.high_watermark:
                    code = ErrorCode.offset_out_of_range
                else:
                    low = plog.delete_records_before(target)
            results.append(
                ctx.make(
                    "DeleteRecordsPartitionResult",
                    partition_index=wanted.partition_index,
                    low_watermark=low,
                    error_code=code,
                )
            )
        topics.append(
            ctx.make("DeleteRecordsTopicResult", name=topic.name, partitions=tuple(results))
        )
    return ctx.make(
        "DeleteRecordsResponse", throttle_time=datetime.timedelta(0), topics=tuple(topics)
    )
