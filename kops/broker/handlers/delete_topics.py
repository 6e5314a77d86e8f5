"""DeleteTopics (key 20): v1-3. Topics are named (topic ids arrive in v6)."""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode

from kops.broker.broker import TopicError
from kops.broker.handlers import RequestContext

API_KEY = 20
MIN_VERSION = 1
MAX_VERSION = 3


async def handle(ctx: RequestContext, request: object) -> object:
    results = []
    for name in request.topic_names:
        code = ErrorCode.none
        try:
            ctx.broker.delete_topic(name)
        except TopicError as exc:
            code = exc.error_code
        results.append(ctx.make("DeletableTopicResult", name=name, error_code=code))
    return ctx.make(
        "DeleteTopicsResponse", throttle_time=datetime.timedelta(0), responses=tuple(results)
    )
