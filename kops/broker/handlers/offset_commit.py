"""OffsetCommit (key 8): v2-7.

- generation -1 with an empty member id is a "simple" commit (assign()-style
  consumers, admin tools); it is accepted while the group has no members.
- Otherwise the member and generation must be current: stale generations get
  ILLEGAL_GENERATION, removed members UNKNOWN_MEMBER_ID, replaced static
  members FENCED_INSTANCE_ID, and commits between JoinGroup and SyncGroup
  REBALANCE_IN_PROGRESS.
- Metadata strings are stored and returned by OffsetFetch unchanged (null as
  ""); more than `offset.metadata.max.bytes` (4096) gets OFFSET_METADATA_TOO_LARGE.
- The empty group id is a valid group id here, as in Kafka (kept for old
  clients that commit without a group): a simple commit stores offsets under "".
- v2-4 retention_time is ignored (KIP-211: the broker's retention applies).
- v3+: throttle_time. v6+: committed_leader_epoch. v7+: group_instance_id.
- In a cluster the answer waits until the offsets partition's ISR has the
  commit (offsets.commit.timeout.ms, then COORDINATOR_NOT_AVAILABLE).
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.offset_commit import v2, v3, v4, v5, v6, v7

from kops.broker.groups.coordinator import GroupCoordinator
from kops.broker.groups.storage import OFFSETS_TOPIC
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 8
MIN_VERSION = 2
MAX_VERSION = 7

Request = (
    v2.OffsetCommitRequest
    | v3.OffsetCommitRequest
    | v4.OffsetCommitRequest
    | v5.OffsetCommitRequest
    | v6.OffsetCommitRequest
    | v7.OffsetCommitRequest
)
Response = (
    v2.OffsetCommitResponse
    | v3.OffsetCommitResponse
    | v4.OffsetCommitResponse
    | v5.OffsetCommitResponse
    | v6.OffsetCommitResponse
    | v7.OffsetCommitResponse
)
REPLY: Reply[Response] = Reply(API_KEY)
WITH_LEADER_EPOCH = (v6.OffsetCommitRequest, v7.OffsetCommitRequest)


async def handle(ctx: RequestContext, request: Request) -> Response:
    offsets: list[tuple[str, int, int, int, str | None]]
    if isinstance(request, WITH_LEADER_EPOCH):
        offsets = [
            (
                t.name,
                p.partition_index,
                p.committed_offset,
                p.committed_leader_epoch,
                p.committed_metadata,
            )
            for t in request.topics
            for p in t.partitions
        ]
    else:
        offsets = [
            (t.name, p.partition_index, p.committed_offset, -1, p.committed_metadata)
            for t in request.topics
            for p in t.partitions
        ]
    coordinator = ctx.broker.coordinator(request.group_id)
    if coordinator is None:
        errors = [ErrorCode.coordinator_not_available] * len(offsets)
    else:
        errors = coordinator.commit_offsets(
            request.group_id,
            request.generation_id_or_member_epoch,
            request.member_id,
            request.group_instance_id if isinstance(request, v7.OffsetCommitRequest) else None,
            offsets,
        )
        if ErrorCode.none in errors:
            errors = await wait_replicated(ctx, coordinator, request.group_id, errors)
    codes = iter(errors)
    topics = []
    for topic in request.topics:
        partitions = tuple(
            ctx.make(
                "OffsetCommitResponsePartition",
                partition_index=p.partition_index,
                error_code=next(codes),
            )
            for p in topic.partitions
        )
        topics.append(ctx.make("OffsetCommitResponseTopic", name=topic.name, partitions=partitions))
    return REPLY(ctx, throttle_time=datetime.timedelta(0), topics=tuple(topics))


async def wait_replicated(
    ctx: RequestContext, coordinator: GroupCoordinator, group_id: str, errors: list[ErrorCode]
) -> list[ErrorCode]:
    """Answer a commit once its offsets partition's ISR has it (Kafka appends commits with
    acks=all): a commit acknowledged and then lost with its coordinator's broker would
    replay records the group had finished. COORDINATOR_NOT_AVAILABLE otherwise, as
    Kafka answers a commit whose append failed or timed out; the client retries."""
    code = await ctx.broker.replicated(
        OFFSETS_TOPIC,
        coordinator.store.partition_for(group_id),
        ctx.broker.config.int("offsets.commit.timeout.ms") / 1000,
    )
    if code == ErrorCode.none:
        return errors
    failed = (
        ErrorCode.not_coordinator
        if code == ErrorCode.not_leader_or_follower
        else (ErrorCode.coordinator_not_available)
    )
    return [failed if e == ErrorCode.none else e for e in errors]


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
