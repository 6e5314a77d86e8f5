"""OffsetFetch (key 9): v1-5.

- A partition without a committed offset answers offset -1, metadata "" and no error.
- The empty group id is a valid group id here, as in Kafka (backward compatibility).
- v2+: topics null asks for every partition the group has committed;
  a top-level error_code (v1 repeats errors on every partition).
- v3+: throttle_time. v5+: committed_leader_epoch.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.offset_fetch import v1, v2, v3, v4, v5

from kops.broker.groups.group import OffsetEntry
from kops.broker.groups.offsets import FetchedOffset
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 9
MIN_VERSION = 1
MAX_VERSION = 5

Request = (
    v1.OffsetFetchRequest
    | v2.OffsetFetchRequest
    | v3.OffsetFetchRequest
    | v4.OffsetFetchRequest
    | v5.OffsetFetchRequest
)
Response = (
    v1.OffsetFetchResponse
    | v2.OffsetFetchResponse
    | v3.OffsetFetchResponse
    | v4.OffsetFetchResponse
    | v5.OffsetFetchResponse
)
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    wanted = None
    if request.topics is not None:
        wanted = [(t.name, list(t.partition_indexes)) for t in request.topics]
    coordinator = ctx.broker.coordinator(request.group_id)
    fetched: list[FetchedOffset] = []
    if coordinator is None:
        error = ErrorCode.coordinator_not_available
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
    return REPLY(ctx, throttle_time=datetime.timedelta(0), topics=topics, error_code=error)


def _partition(
    ctx: RequestContext, index: int, entry: OffsetEntry | None, error: ErrorCode
) -> object:
    return ctx.make(
        "OffsetFetchResponsePartition",
        partition_index=index,
        committed_offset=entry.offset if entry is not None else -1,
        committed_leader_epoch=entry.leader_epoch if entry is not None else -1,
        metadata=entry.metadata if entry is not None else "",
        error_code=error,
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
