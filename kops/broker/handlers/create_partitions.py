"""CreatePartitions (key 37): v0-1. Partition counts only grow."""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode

from kops.broker.broker import TopicError
from kops.broker.handlers import RequestContext

API_KEY = 37
MIN_VERSION = 0
MAX_VERSION = 1


async def handle(ctx: RequestContext, request: object) -> object:
    results = []
    for topic in request.topics:
        code, message = ErrorCode.none, None
        try:
            ctx.broker.create_partitions(
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
    return ctx.make(
        "CreatePartitionsResponse", throttle_time=datetime.timedelta(0), results=tuple(results)
    )
