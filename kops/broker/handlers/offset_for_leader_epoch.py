"""OffsetForLeaderEpoch (key 23): v2-3.

- librdkafka uses v2 to validate its position after a leader change (KIP-320);
  followers use it to find where their log diverges (KIP-101/279).
- Answers the largest epoch not above the one asked for and that epoch's end
  offset (the next epoch's start, or the log end offset).
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.offset_for_leader_epoch import v2, v3

from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 23
MIN_VERSION = 2
MAX_VERSION = 3

Request = v2.OffsetForLeaderEpochRequest | v3.OffsetForLeaderEpochRequest
Response = v2.OffsetForLeaderEpochResponse | v3.OffsetForLeaderEpochResponse
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    topics = []
    for topic in request.topics:
        results = []
        for wanted in topic.partitions:
            code, epoch, end = ErrorCode.none, -1, -1
            found = ctx.broker.leader_partition(
                topic.topic, wanted.partition, wanted.current_leader_epoch
            )
            if isinstance(found, ErrorCode):
                code = found
            else:
                epoch, end = found.end_offset_for_epoch(wanted.leader_epoch)
            results.append(
                ctx.make(
                    "EpochEndOffset",
                    error_code=code,
                    partition=wanted.partition,
                    leader_epoch=epoch,
                    end_offset=end,
                )
            )
        topics.append(
            ctx.make("OffsetForLeaderTopicResult", topic=topic.topic, partitions=tuple(results))
        )
    return REPLY(ctx, throttle_time=datetime.timedelta(0), topics=tuple(topics))


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
