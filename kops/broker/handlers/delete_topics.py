"""DeleteTopics (key 20): v1-3. Topics are named (topic ids arrive in v6)."""

from __future__ import annotations

import datetime

from kio.schema.delete_topics import v1, v2, v3
from kio.schema.errors import ErrorCode

from kops.broker.cluster.topics import TopicError
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 20
MIN_VERSION = 1
MAX_VERSION = 3

Request = v1.DeleteTopicsRequest | v2.DeleteTopicsRequest | v3.DeleteTopicsRequest
Response = v1.DeleteTopicsResponse | v2.DeleteTopicsResponse | v3.DeleteTopicsResponse
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    results = []
    for name in request.topic_names:
        code = ErrorCode.none
        try:
            await ctx.broker.admin.delete_topic(name)
        except TopicError as exc:
            code = exc.error_code
        results.append(ctx.make("DeletableTopicResult", name=name, error_code=code))
    return REPLY(ctx, throttle_time=datetime.timedelta(0), responses=tuple(results))


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
