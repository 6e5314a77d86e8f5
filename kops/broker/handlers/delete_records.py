"""DeleteRecords (key 21): v0-2.

- Advances the log start offset; whole segments below it are removed.
- offset -1 means the high watermark; beyond it is OFFSET_OUT_OF_RANGE.
"""

from __future__ import annotations

import datetime

from kio.schema.delete_records import v0, v1, v2
from kio.schema.errors import ErrorCode

from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 21
MIN_VERSION = 0
MAX_VERSION = 2

Request = v0.DeleteRecordsRequest | v1.DeleteRecordsRequest | v2.DeleteRecordsRequest
Response = v0.DeleteRecordsResponse | v1.DeleteRecordsResponse | v2.DeleteRecordsResponse
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    topics = []
    for topic in request.topics:
        results = []
        for wanted in topic.partitions:
            code, low = ErrorCode.none, -1
            found = ctx.broker.leader_partition(topic.name, wanted.partition_index)
            if isinstance(found, ErrorCode):
                code = found
            else:
                code, low = found.delete_records(wanted.offset)
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
    return REPLY(ctx, throttle_time=datetime.timedelta(0), topics=tuple(topics))


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
