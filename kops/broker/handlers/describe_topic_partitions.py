"""DescribeTopicPartitions (key 75): v0 (KIP-966). Admin clients' describe_topics().

Topic metadata as Metadata gives it, in pages of partitions, answered as Kafka's
DescribeTopicPartitionsRequestHandler and KRaftMetadataCache do:

- the named topics, or every topic when none are named, each once, in name
  order (Java's String order); no topic is auto-created;
- cursor (topic, partition): topics ordered before the cursor's are skipped,
  and the cursor's topic starts at the cursor's partition. Named topics that
  leave out the cursor's topic get INVALID_REQUEST, on every topic named;
- at most max(1, min(response_partition_limit,
  `max.request.partition.size.limit` (2000))) partitions per response. A topic
  cut short by the limit ends the response with next_cursor at its first
  partition left out; a topic the limit leaves no room for at all, with
  next_cursor at its partition 0;
- a named topic that does not exist answers UNKNOWN_TOPIC_OR_PARTITION
  (INVALID_TOPIC_EXCEPTION for an illegal name) with a zero topic id;
- topic_authorized_operations is always filled (the request has no flag):
  every topic operation, kops having no authorizer (see
  kops.broker.authorized_operations);
- eligible_leader_replicas and last_known_elr are empty: kops elects no
  leaders from an ELR.
"""

from __future__ import annotations

import datetime
import uuid

from kio.schema.describe_topic_partitions import v0
from kio.schema.errors import ErrorCode

from kops.broker.authorized_operations import NOT_REQUESTED, Resource, authorized_operations
from kops.broker.cluster.topics import topic_name_error
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 75
MIN_VERSION = 0
MAX_VERSION = 0

Request = v0.DescribeTopicPartitionsRequest
Response = v0.DescribeTopicPartitionsResponse
REPLY: Reply[Response] = Reply(API_KEY)

# Kafka's max.request.partition.size.limit default.
DEFAULT_PARTITION_LIMIT = 2000
ZERO_UUID = uuid.UUID(int=0)


def _order(name: str) -> bytes:
    # Java compares strings by UTF-16 code unit; big-endian UTF-16 bytes sort the same way.
    return name.encode("utf-16-be", "surrogatepass")


async def handle(ctx: RequestContext, request: Request) -> Response:
    broker = ctx.broker
    cursor = request.cursor
    cursor_topic = cursor.topic_name if cursor is not None else ""
    fetch_all = not request.topics
    candidates = broker.topic_names() if fetch_all else [t.name for t in request.topics]
    floor = _order(cursor_topic)
    names = sorted({n for n in candidates if _order(n) >= floor}, key=_order)
    if cursor is not None and not fetch_all and cursor.topic_name not in names:
        return _refused(ctx, request, ErrorCode.invalid_request)

    setting = broker.config.get("max.request.partition.size.limit")
    configured = int(setting) if setting else DEFAULT_PARTITION_LIMIT
    remaining = max(min(configured, request.response_partition_limit), 1)
    operations = authorized_operations(Resource.TOPIC)
    topics = []
    next_cursor = None
    for name in names:
        if remaining <= 0:
            # Everything before fits; this topic starts the next page.
            next_cursor = ctx.make("Cursor", topic_name=name, partition_index=0)
            break
        record = broker.topic(name)
        if record is None:
            if not fetch_all:
                code = (
                    ErrorCode.invalid_topic_exception
                    if topic_name_error(name)
                    else ErrorCode.unknown_topic_or_partition
                )
                topics.append(
                    ctx.make(
                        "DescribeTopicPartitionsResponseTopic",
                        error_code=code,
                        name=name,
                        topic_id=ZERO_UUID,
                        is_internal=broker.is_internal(name),
                        partitions=(),
                        topic_authorized_operations=operations,
                    )
                )
            continue
        start = cursor.partition_index if cursor is not None and name == cursor_topic else 0
        count = record.partitions
        upper = min(count, start + remaining)
        partitions = tuple(
            ctx.make(
                "DescribeTopicPartitionsResponsePartition",
                error_code=ErrorCode.none if p.leader >= 0 else ErrorCode.leader_not_available,
                partition_index=p.partition,
                leader_id=p.leader,
                leader_epoch=p.leader_epoch,
                replica_nodes=p.replicas,
                isr_nodes=p.isr,
                eligible_leader_replicas=(),
                last_known_elr=(),
                offline_replicas=(),
            )
            for p in broker.partition_states(name)
            if start <= p.partition < upper
        )
        topics.append(
            ctx.make(
                "DescribeTopicPartitionsResponseTopic",
                error_code=ErrorCode.none,
                name=name,
                topic_id=record.topic_id,
                is_internal=record.internal,
                partitions=partitions,
                topic_authorized_operations=operations,
            )
        )
        if upper < count:
            next_cursor = ctx.make("Cursor", topic_name=name, partition_index=upper)
            break
        remaining -= len(partitions)
    return REPLY(
        ctx, throttle_time=datetime.timedelta(0), topics=tuple(topics), next_cursor=next_cursor
    )


def _refused(ctx: RequestContext, request: Request, code: ErrorCode) -> Response:
    """Kafka's DescribeTopicPartitionsRequest.getErrorResponse: the error on every topic named."""
    topics = tuple(
        ctx.make(
            "DescribeTopicPartitionsResponseTopic",
            error_code=code,
            name=t.name,
            topic_id=ZERO_UUID,
            is_internal=False,
            partitions=(),
            topic_authorized_operations=NOT_REQUESTED,
        )
        for t in request.topics
    )
    return REPLY(ctx, throttle_time=datetime.timedelta(0), topics=topics, next_cursor=None)


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
