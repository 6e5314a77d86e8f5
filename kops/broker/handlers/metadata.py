"""Metadata (key 3): v0-8.

- v1+: a null topic list means every topic; v0 uses an empty list for that.
- v4+: allow_auto_topic_creation; earlier versions always auto-create (if the
  broker allows it).
- v7+: leader_epoch per partition (librdkafka then validates positions with
  OffsetForLeaderEpoch v2).
- v8+: include_topic_authorized_operations / include_cluster_authorized_operations
  fill the bit fields (every operation: kops has no authorizer; see
  kops.broker.authorized_operations), for every topic answered, known or not,
  as Kafka does; otherwise they say "not requested".
- Internal topics are reported with is_internal so admin tools hide them.
- Leaders, replicas and ISR come from the cluster metadata, for partitions
  hosted elsewhere too; a partition without a leader (its only ISR member is
  down) has LEADER_NOT_AVAILABLE, as in Kafka.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.metadata import v0, v1, v2, v3, v4, v5, v6, v7, v8

from kops.broker.authorized_operations import Resource, authorized_operations
from kops.broker.cluster.topics import topic_name_error
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 3
MIN_VERSION = 0
MAX_VERSION = 8

Request = (
    v0.MetadataRequest
    | v1.MetadataRequest
    | v2.MetadataRequest
    | v3.MetadataRequest
    | v4.MetadataRequest
    | v5.MetadataRequest
    | v6.MetadataRequest
    | v7.MetadataRequest
    | v8.MetadataRequest
)
Response = (
    v0.MetadataResponse
    | v1.MetadataResponse
    | v2.MetadataResponse
    | v3.MetadataResponse
    | v4.MetadataResponse
    | v5.MetadataResponse
    | v6.MetadataResponse
    | v7.MetadataResponse
    | v8.MetadataResponse
)
REPLY: Reply[Response] = Reply(API_KEY)
WITH_AUTO_CREATE = (
    v4.MetadataRequest,
    v5.MetadataRequest,
    v6.MetadataRequest,
    v7.MetadataRequest,
    v8.MetadataRequest,
)


async def handle(ctx: RequestContext, request: Request) -> Response:
    broker = ctx.broker
    requested = request.topics
    if requested is None or (ctx.api_version == 0 and not requested):
        names = broker.topic_names()
    else:
        names = [topic.name for topic in requested]
    allow_create = not isinstance(request, WITH_AUTO_CREATE) or request.allow_auto_topic_creation
    topic_ops = authorized_operations(
        Resource.TOPIC,
        isinstance(request, v8.MetadataRequest) and request.include_topic_authorized_operations,
    )
    cluster_ops = authorized_operations(
        Resource.CLUSTER,
        isinstance(request, v8.MetadataRequest) and request.include_cluster_authorized_operations,
    )
    topics = []
    for name in names:
        record = broker.topic(name)
        if record is None and allow_create:
            record = await broker.auto_create(name)
        if record is None:
            code = (
                ErrorCode.invalid_topic_exception
                if topic_name_error(name)
                else ErrorCode.unknown_topic_or_partition
            )
            topics.append(
                ctx.make(
                    "MetadataResponseTopic",
                    error_code=code,
                    name=name,
                    is_internal=False,
                    partitions=(),
                    topic_authorized_operations=topic_ops,
                )
            )
            continue
        partitions = tuple(
            ctx.make(
                "MetadataResponsePartition",
                error_code=ErrorCode.none if p.leader >= 0 else ErrorCode.leader_not_available,
                partition_index=p.partition,
                leader_id=p.leader,
                leader_epoch=p.leader_epoch,
                replica_nodes=p.replicas,
                isr_nodes=p.isr,
                offline_replicas=(),
            )
            for p in broker.partition_states(name)
        )
        topics.append(
            ctx.make(
                "MetadataResponseTopic",
                error_code=ErrorCode.none,
                name=name,
                is_internal=record.internal,
                partitions=partitions,
                topic_authorized_operations=topic_ops,
            )
        )
    return REPLY(
        ctx,
        throttle_time=datetime.timedelta(0),
        brokers=tuple(
            ctx.make(
                "MetadataResponseBroker", node_id=b.node_id, host=b.host, port=b.port, rack=None
            )
            for b in broker.cluster_brokers()
        ),
        cluster_id=broker.cluster_id,
        controller_id=broker.controller_id,
        topics=tuple(topics),
        cluster_authorized_operations=cluster_ops,
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
