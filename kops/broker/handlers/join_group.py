"""JoinGroup (key 11): v0-5.

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

from kops.broker.groups import coordinator_of
from kops.broker.groups.coordinator import JoinRequest
from kops.broker.groups.group import JoinResult
from kops.broker.handlers import RequestContext

API_KEY = 11
MIN_VERSION = 0
MAX_VERSION = 5

_MS = datetime.timedelta(milliseconds=1)


async def handle(ctx: RequestContext, request: object) -> object:
    coordinator = coordinator_of(ctx.broker)
    if coordinator is None:
        result = JoinResult(ErrorCode.coordinator_not_available, request.member_id)
    else:
        session_ms = request.session_timeout // _MS
        rebalance = getattr(request, "rebalance_timeout", None)
        result = await coordinator.join_group(
            JoinRequest(
                group_id=request.group_id,
                member_id=request.member_id,
                instance_id=getattr(request, "group_instance_id", None),
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
    return ctx.make(
        "JoinGroupResponse",
        throttle_time=datetime.timedelta(0),
        error_code=result.error,
        generation_id=result.generation,
        protocol_name=result.protocol_name or "",
        leader=result.leader,
        member_id=result.member_id,
        members=members,
    )
