"""CreateTopics (key 19): v2-4.

- Explicit replica assignments are accepted only when they name this broker.
- validate_only checks everything without creating.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode

from kops.broker.broker import TopicError
from kops.broker.handlers import RequestContext

API_KEY = 19
MIN_VERSION = 2
MAX_VERSION = 4


async def handle(ctx: RequestContext, request: object) -> object:
    results = []
    for topic in request.topics:
        code, message = ErrorCode.none, None
        try:
            partitions, replication = topic.num_partitions, topic.replication_factor
            if topic.assignments:
                partitions = len(topic.assignments)
                replication = len(topic.assignments[0].broker_ids)
            ctx.broker.create_topic(
                topic.name,
                partitions,
                replication,
                {c.name: c.value for c in topic.configs if c.value is not None},
                validate_only=request.validate_only,
            )
        except TopicError as exc:
            code, message = exc.error_code, exc.message
        results.append(
            ctx.make(
                "CreatableTopicResult", name=topic.name, error_code=code, error_message=message
            )
        )
    return ctx.make(
        "CreateTopicsResponse", throttle_time=datetime.timedelta(0), topics=tuple(results)
    )
