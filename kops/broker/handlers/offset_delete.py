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

from kops.broker.groups import coordinator_of
from kops.broker.handlers import RequestContext

API_KEY = 47
MIN_VERSION = 0
MAX_VERSION = 0


async def handle(ctx: RequestContext, request: object) -> object:
    wanted = [(t.name, [p.partition_index for p in t.partitions]) for t in request.topics]
    coordinator = coordinator_of(ctx.broker)
    if coordinator is None:
        error, results = ErrorCode.coordinator_not_available, []
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
    return ctx.make(
        "OffsetDeleteResponse", error_code=error, throttle_time=datetime.timedelta(0), topics=topics
    )
