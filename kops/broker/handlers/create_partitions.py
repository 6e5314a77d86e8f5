"""CreatePartitions (key 37): v0-1. Partition counts only grow."""

from __future__ import annotations

import datetime

from kio.schema.create_partitions import v0, v1
from kio.schema.errors import ErrorCode

from kops.broker.cluster.topics import TopicError
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 37
MIN_VERSION = 0
MAX_VERSION = 1

Request = v0.CreatePartitionsRequest | v1.CreatePartitionsRequest
Response = v0.CreatePartitionsResponse | v1.CreatePartitionsResponse
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    results = []
    for topic in request.topics:
        code, message = ErrorCode.none, None
        try:
            await ctx.broker.admin.create_partitions(
                topic.name, topic.count, validate_only=request.validate_only
            )
        except TopicError as exc:
            code, message = exc.error_code, exc.message
        results.append(
            ctx.make(
                "CreatePartitionsTopicResult",
                name=topic.name,
                error_code=code,
                error_message=message,
            )
        )
    return REPLY(ctx, throttle_time=datetime.timedelta(0), results=tuple(results))


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
