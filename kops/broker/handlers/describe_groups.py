"""DescribeGroups (key 15): v0-4.

- An unknown group is described as state "Dead" with no error (as Kafka does
  before v6). The empty group id is a valid one here (Kafka keeps DescribeGroups,
  like OffsetCommit/OffsetFetch/DeleteGroups, open to it): a Dead group too,
  unless offsets were committed under it.
- Stable groups report the chosen protocol and each member's subscription
  metadata and assignment; during a rebalance both are empty.
- v1+: throttle_time. v3+: authorized_operations when asked, for groups
  described without error (as Kafka): READ, DELETE and DESCRIBE, every group
  operation (kops has no authorizer; see kops.broker.authorized_operations).
  v4+: group_instance_id.
- librdkafka >= 2.10 tries ConsumerGroupDescribe (69) first; kops does not
  advertise it, so it falls back to this API.
"""

from __future__ import annotations

import datetime

from kio.schema.describe_groups import v0, v1, v2, v3, v4
from kio.schema.errors import ErrorCode

from kops.broker.authorized_operations import NOT_REQUESTED, Resource, authorized_operations
from kops.broker.groups.offsets import GroupSummary
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 15
MIN_VERSION = 0
MAX_VERSION = 4

Request = (
    v0.DescribeGroupsRequest
    | v1.DescribeGroupsRequest
    | v2.DescribeGroupsRequest
    | v3.DescribeGroupsRequest
    | v4.DescribeGroupsRequest
)
Response = (
    v0.DescribeGroupsResponse
    | v1.DescribeGroupsResponse
    | v2.DescribeGroupsResponse
    | v3.DescribeGroupsResponse
    | v4.DescribeGroupsResponse
)
REPLY: Reply[Response] = Reply(API_KEY)
WITH_OPERATIONS = (v3.DescribeGroupsRequest, v4.DescribeGroupsRequest)


async def handle(ctx: RequestContext, request: Request) -> Response:
    operations = authorized_operations(
        Resource.GROUP,
        isinstance(request, WITH_OPERATIONS) and request.include_authorized_operations,
    )
    described = []
    for group_id in request.groups:
        coordinator = ctx.broker.coordinator(group_id)
        if coordinator is None:
            summary = GroupSummary(
                ErrorCode.coordinator_not_available, group_id, "", "", "", [], False
            )
        else:
            summary = coordinator.describe_group(group_id)
        members = tuple(
            ctx.make(
                "DescribedGroupMember",
                member_id=m.member_id,
                group_instance_id=m.instance_id,
                client_id=m.client_id,
                client_host=m.client_host,
                member_metadata=m.metadata(summary.protocol_name) if summary.with_metadata else b"",
                member_assignment=m.assignment if summary.with_metadata else b"",
            )
            for m in summary.members
        )
        described.append(
            ctx.make(
                "DescribedGroup",
                error_code=summary.error,
                group_id=group_id,
                group_state=summary.state,
                protocol_type=summary.protocol_type,
                protocol_data=summary.protocol_name,
                members=members,
                authorized_operations=operations if not summary.error else NOT_REQUESTED,
            )
        )
    return REPLY(ctx, throttle_time=datetime.timedelta(0), groups=tuple(described))


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
