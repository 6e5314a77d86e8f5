"""LeaveGroup (key 13): v0-3.

- v0-2: one member_id; its error is the response's error.
- v3+: a batch of members identified by member id and/or group_instance_id
  (a static member leaves by instance id, KIP-345); one result per member.
- Removing a member of a Stable group starts a rebalance for the others.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode

from kops.broker.groups import coordinator_of
from kops.broker.handlers import RequestContext

API_KEY = 13
MIN_VERSION = 0
MAX_VERSION = 3


async def handle(ctx: RequestContext, request: object) -> object:
    if ctx.api_version >= 3:
        wanted = [(m.member_id, m.group_instance_id) for m in request.members]
    else:
        wanted = [(request.member_id, None)]
    coordinator = coordinator_of(ctx.broker)
    if coordinator is None:
        top, results = ErrorCode.coordinator_not_available, []
    else:
        top, results = coordinator.leave_group(request.group_id, wanted)
    if ctx.api_version < 3 and not top and results:
        top = results[0][2]
    members = ()
    if ctx.api_version >= 3:
        members = tuple(
            ctx.make("MemberResponse", member_id=mid, group_instance_id=iid, error_code=code)
            for mid, iid, code in results
        )
    return ctx.make(
        "LeaveGroupResponse", throttle_time=datetime.timedelta(0), error_code=top, members=members
    )
