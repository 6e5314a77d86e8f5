"""LeaveGroup (key 13): v0-3.

- v0-2: one member_id; its error is the response's error.
- v3+: a batch of members identified by member id and/or group_instance_id
  (a static member leaves by instance id, KIP-345); one result per member.
- Removing a member of a Stable group starts a rebalance for the others.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.leave_group import v0, v1, v2, v3

from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 13
MIN_VERSION = 0
MAX_VERSION = 3

Request = v0.LeaveGroupRequest | v1.LeaveGroupRequest | v2.LeaveGroupRequest | v3.LeaveGroupRequest
Response = (
    v0.LeaveGroupResponse | v1.LeaveGroupResponse | v2.LeaveGroupResponse | v3.LeaveGroupResponse
)
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    wanted: list[tuple[str, str | None]]
    if isinstance(request, v3.LeaveGroupRequest):
        wanted = [(m.member_id, m.group_instance_id) for m in request.members]
    else:
        wanted = [(request.member_id, None)]
    coordinator = ctx.broker.coordinator(request.group_id)
    results: list[tuple[str, str | None, ErrorCode]] = []
    if coordinator is None:
        top = ErrorCode.coordinator_not_available
    else:
        top, results = coordinator.leave_group(request.group_id, wanted)
    if ctx.api_version < 3 and not top and results:
        top = results[0][2]
    members: tuple[object, ...] = ()
    if ctx.api_version >= 3:
        members = tuple(
            ctx.make("MemberResponse", member_id=mid, group_instance_id=iid, error_code=code)
            for mid, iid, code in results
        )
    return REPLY(ctx, throttle_time=datetime.timedelta(0), error_code=top, members=members)


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
