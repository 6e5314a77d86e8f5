"""CreateTopics (key 19): v2-4.

- Explicit replica assignments give the partition count and replication
  factor; where the replicas go is the broker's (or the controller's) choice.
- In a cluster any broker takes the request and forwards it to the active
  controller (kops.broker.cluster.topic_changes).
- validate_only checks everything without creating.
"""

from __future__ import annotations

import datetime

from kio.schema.create_topics import v2, v3, v4
from kio.schema.errors import ErrorCode

from kops.broker.cluster.topics import TopicError
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 19
MIN_VERSION = 2
MAX_VERSION = 4

Request = v2.CreateTopicsRequest | v3.CreateTopicsRequest | v4.CreateTopicsRequest
Response = v2.CreateTopicsResponse | v3.CreateTopicsResponse | v4.CreateTopicsResponse
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    results = []
    for topic in request.topics:
        code, message = ErrorCode.none, None
        try:
            partitions: int = topic.num_partitions
            replication: int = topic.replication_factor
            if topic.assignments:
                partitions = len(topic.assignments)
                replication = len(topic.assignments[0].broker_ids)
            await ctx.broker.admin.create_topic(
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
    return REPLY(ctx, throttle_time=datetime.timedelta(0), topics=tuple(results))


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
