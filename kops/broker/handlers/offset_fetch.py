"""OffsetFetch (key 9): v1-9.

- A partition without a committed offset answers offset -1, metadata "" and no error.
- The empty group id is a valid group id here, as in Kafka (backward compatibility).
- v1 has no top-level error: a group's error is repeated on every requested
  partition. v2+: topics null asks for every partition the group has committed;
  a group's error is the top-level error_code, with no topics (Kafka's
  OffsetFetchRequest.getErrorResponse).
- v3+: throttle_time. v5+: committed_leader_epoch. v6+: flexible.
- v7+ (KIP-447): require_stable. When true, a partition for which the group holds
  offsets of a transaction not yet ended (TxnOffsetCommit) answers
  UNSTABLE_OFFSET_COMMIT with offset -1; clients retry until the transaction
  ends (librdkafka sends it when isolation.level=read_committed). When false,
  such a partition answers its last committed offset.
- v8+ (KIP-709): `groups`, each answered with its own error code and topics; the
  top-level topics and error_code are gone.
- v9 adds member_id and member_epoch for KIP-848 consumer groups. The groups kops
  runs are classic ones, which ignore both (Kafka's ClassicGroup.validateOffsetFetch),
  so v9 answers as v8. v10 (topic ids in place of names) is not served.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Protocol

from kio.schema.errors import ErrorCode
from kio.schema.offset_fetch import v1, v2, v3, v4, v5, v6, v7, v8, v9

from kops.broker.groups.group import OffsetEntry
from kops.broker.groups.offsets import FetchedOffset
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 9
MIN_VERSION = 1
MAX_VERSION = 9

Request = (
    v1.OffsetFetchRequest
    | v2.OffsetFetchRequest
    | v3.OffsetFetchRequest
    | v4.OffsetFetchRequest
    | v5.OffsetFetchRequest
    | v6.OffsetFetchRequest
    | v7.OffsetFetchRequest
    | v8.OffsetFetchRequest
    | v9.OffsetFetchRequest
)
Response = (
    v1.OffsetFetchResponse
    | v2.OffsetFetchResponse
    | v3.OffsetFetchResponse
    | v4.OffsetFetchResponse
    | v5.OffsetFetchResponse
    | v6.OffsetFetchResponse
    | v7.OffsetFetchResponse
    | v8.OffsetFetchResponse
    | v9.OffsetFetchResponse
)
REPLY: Reply[Response] = Reply(API_KEY)

# (topic, partitions) asked for; None: every partition the group has committed.
Wanted = list[tuple[str, list[int]]] | None


class _RequestTopic(Protocol):
    """A request topic of any version (OffsetFetchRequestTopic, v8+ ...Topics)."""

    @property
    def name(self) -> str: ...

    @property
    def partition_indexes(self) -> Sequence[int]: ...


async def handle(ctx: RequestContext, request: Request) -> Response:
    throttle = datetime.timedelta(0)
    if isinstance(request, v8.OffsetFetchRequest | v9.OffsetFetchRequest):
        groups = []
        for group in request.groups:
            error, topics = _fetch(
                ctx, group.group_id, _wanted(group.topics), request.require_stable
            )
            groups.append(
                ctx.make(
                    "OffsetFetchResponseGroup",
                    group_id=group.group_id,
                    topics=topics,
                    error_code=error,
                )
            )
        return REPLY(ctx, throttle_time=throttle, groups=tuple(groups))
    require_stable = isinstance(request, v7.OffsetFetchRequest) and request.require_stable
    error, topics = _fetch(ctx, request.group_id, _wanted(request.topics), require_stable)
    return REPLY(ctx, throttle_time=throttle, topics=topics, error_code=error)


def _wanted(topics: Sequence[_RequestTopic] | None) -> Wanted:
    if topics is None:
        return None
    return [(t.name, list(t.partition_indexes)) for t in topics]


def _fetch(
    ctx: RequestContext, group_id: str, wanted: Wanted, require_stable: bool
) -> tuple[ErrorCode, tuple[object, ...]]:
    """One group's (error code, response topics) in this version's classes."""
    coordinator = ctx.broker.coordinator(group_id)
    fetched: list[FetchedOffset] = []
    if coordinator is None:
        error = ErrorCode.coordinator_not_available
    else:
        error, fetched = coordinator.fetch_offsets(group_id, wanted, require_stable=require_stable)
    by_topic: dict[str, list[object]] = {}
    if error:
        if ctx.api_version < 2:  # no top-level error: repeat it on each partition
            for name, partitions in wanted or []:
                by_topic[name] = [_partition(ctx, p, None, error) for p in partitions]
    else:
        for item in fetched:
            by_topic.setdefault(item.topic, []).append(
                _partition(ctx, item.partition, item.entry, item.error)
            )
    topic_class = (
        "OffsetFetchResponseTopics" if ctx.api_version >= 8 else "OffsetFetchResponseTopic"
    )
    topics = tuple(
        ctx.make(topic_class, name=name, partitions=tuple(partitions))
        for name, partitions in by_topic.items()
    )
    return error, topics


def _partition(
    ctx: RequestContext, index: int, entry: OffsetEntry | None, error: ErrorCode
) -> object:
    return ctx.make(
        "OffsetFetchResponsePartitions" if ctx.api_version >= 8 else "OffsetFetchResponsePartition",
        partition_index=index,
        committed_offset=entry.offset if entry is not None else -1,
        committed_leader_epoch=entry.leader_epoch if entry is not None else -1,
        metadata=entry.metadata if entry is not None else "",
        error_code=error,
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
