"""OffsetDelete (key 47): v0.

- Deletes committed offsets of a group (tombstones in `__consumer_offsets`).
- Allowed for any partition of an Empty group; in a group with members, a
  partition of a topic some member subscribes to gets GROUP_SUBSCRIBED_TO_TOPIC
  (subscriptions are read from the consumer protocol metadata; a group whose
  metadata cannot be read gets NON_EMPTY_GROUP).
- Unknown group: GROUP_ID_NOT_FOUND.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.offset_delete import v0

from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 47
MIN_VERSION = 0
MAX_VERSION = 0

Request = v0.OffsetDeleteRequest
Response = v0.OffsetDeleteResponse
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    wanted = [(t.name, [p.partition_index for p in t.partitions]) for t in request.topics]
    coordinator = ctx.broker.coordinator(request.group_id)
    results: list[tuple[str, int, ErrorCode]] = []
    if coordinator is None:
        error = ErrorCode.coordinator_not_available
    else:
        error, results = coordinator.delete_offsets(request.group_id, wanted)
    by_topic: dict[str, list[object]] = {}
    for topic, partition, code in results:
        by_topic.setdefault(topic, []).append(
            ctx.make("OffsetDeleteResponsePartition", partition_index=partition, error_code=code)
        )
    topics = tuple(
        ctx.make("OffsetDeleteResponseTopic", name=name, partitions=tuple(parts))
        for name, parts in by_topic.items()
    )
    return REPLY(ctx, error_code=error, throttle_time=datetime.timedelta(0), topics=topics)


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
