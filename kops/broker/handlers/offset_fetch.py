"""OffsetFetch (key 9): v1-5.

- A partition without a committed offset answers offset -1, metadata "" and no error.
- v2+: topics null asks for every partition the group has committed;
  a top-level error_code (v1 repeats errors on every partition).
- v3+: throttle_time. v5+: committed_leader_epoch.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode

from kops.broker.groups import coordinator_of
from kops.broker.handlers import RequestContext

API_KEY = 9
MIN_VERSION = 1
MAX_VERSION = 5


async def handle(ctx: RequestContext, request: object) -> object:
    wanted = None
    if request.topics is not None:
        wanted = [(t.name, list(t.partition_indexes)) for t in request.topics]
    coordinator = coordinator_of(ctx.broker)
    if coordinator is None:
        error, fetched = ErrorCode.coordinator_not_available, []
    else:
        error, fetched = coordinator.fetch_offsets(request.group_id, wanted)
    by_topic: dict[str, list[object]] = {}
    if error:
        # v1 has no top-level error: report it on each requested partition.
        for name, partitions in wanted or []:
            by_topic[name] = [_partition(ctx, p, None, error) for p in partitions]
    else:
        for item in fetched:
            by_topic.setdefault(item.topic, []).append(
                _partition(ctx, item.partition, item.entry, item.error)
            )
    topics = tuple(
        ctx.make("OffsetFetchResponseTopic", name=name, partitions=tuple(partitions))
        for name, partitions in by_topic.items()
    )
    return ctx.make(
        "OffsetFetchResponse", throttle_time=datetime.timedelta(0), topics=topics, error_code=error
    )


def _partition(ctx: RequestContext, index: int, entry: object, error: int) -> object:
    return ctx.make(
        "OffsetFetchResponsePartition",
        partition_index=index,
        committed_offset=entry.offset if entry is not None else -1,
        committed_leader_epoch=entry.leader_epoch if entry is not None else -1,
        metadata=entry.metadata if entry is not None else "",
        error_code=error,
    )
