"""JoinGroup (key 11): v0-5.

- An empty group id gets INVALID_GROUP_ID (as SyncGroup, Heartbeat, LeaveGroup
  and OffsetDelete do; only the offset and describe/delete APIs accept it).
- The response waits until the rebalance completes (all members rejoined, the
  rebalance timeout passed, or `group.initial.rebalance.delay.ms` for an Empty
  group); only this connection waits.
- v0 has no rebalance_timeout: the session timeout serves as both (as in Kafka).
- v4+: a first join without a member id gets MEMBER_ID_REQUIRED and an id (KIP-394).
- v5+: group_instance_id (static membership, KIP-345).
- The leader's response lists every member's metadata for the chosen protocol.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.join_group import v0, v1, v2, v3, v4, v5

from kops.broker.groups.group import JoinRequest, JoinResult
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 11
MIN_VERSION = 0
MAX_VERSION = 5

Request = (
    v0.JoinGroupRequest
    | v1.JoinGroupRequest
    | v2.JoinGroupRequest
    | v3.JoinGroupRequest
    | v4.JoinGroupRequest
    | v5.JoinGroupRequest
)
Response = (
    v0.JoinGroupResponse
    | v1.JoinGroupResponse
    | v2.JoinGroupResponse
    | v3.JoinGroupResponse
    | v4.JoinGroupResponse
    | v5.JoinGroupResponse
)
REPLY: Reply[Response] = Reply(API_KEY)

_MS = datetime.timedelta(milliseconds=1)


async def handle(ctx: RequestContext, request: Request) -> Response:
    coordinator = ctx.broker.coordinator(request.group_id)
    if coordinator is None:
        result = JoinResult(ErrorCode.coordinator_not_available, request.member_id)
    else:
        session_ms = request.session_timeout // _MS
        rebalance = None if isinstance(request, v0.JoinGroupRequest) else request.rebalance_timeout
        result = await coordinator.join_group(
            JoinRequest(
                group_id=request.group_id,
                member_id=request.member_id,
                instance_id=(
                    request.group_instance_id if isinstance(request, v5.JoinGroupRequest) else None
                ),
                protocol_type=request.protocol_type,
                protocols=[(p.name, bytes(p.metadata)) for p in request.protocols],
                session_timeout_ms=session_ms,
                rebalance_timeout_ms=session_ms if rebalance is None else rebalance // _MS,
                client_id=ctx.client_id or "",
                client_host=f"/{ctx.peer.host}",
                require_known_member_id=ctx.api_version >= 4,
            )
        )
    members = tuple(
        ctx.make("JoinGroupResponseMember", member_id=mid, group_instance_id=iid, metadata=meta)
        for mid, iid, meta in result.members
    )
    return REPLY(
        ctx,
        throttle_time=datetime.timedelta(0),
        error_code=result.error,
        generation_id=result.generation,
        protocol_name=result.protocol_name or "",
        leader=result.leader,
        member_id=result.member_id,
        members=members,
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
