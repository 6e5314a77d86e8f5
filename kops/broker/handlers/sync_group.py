"""SyncGroup (key 14): v0-3.

- The leader sends every member's assignment; the others send none and wait
  for it (only their own connection waits). In Stable, a member gets its
  current assignment back at once.
- v1+: throttle_time. v3+: group_instance_id.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.sync_group import v0, v1, v2, v3

from kops.broker.groups.group import SyncResult
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 14
MIN_VERSION = 0
MAX_VERSION = 3

Request = v0.SyncGroupRequest | v1.SyncGroupRequest | v2.SyncGroupRequest | v3.SyncGroupRequest
Response = v0.SyncGroupResponse | v1.SyncGroupResponse | v2.SyncGroupResponse | v3.SyncGroupResponse
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    coordinator = ctx.broker.coordinator(request.group_id)
    if coordinator is None:
        result = SyncResult(ErrorCode.coordinator_not_available)
    else:
        result = await coordinator.sync_group(
            request.group_id,
            request.generation_id,
            request.member_id,
            request.group_instance_id if isinstance(request, v3.SyncGroupRequest) else None,
            # v5+ carry protocol type and name for validation; the versions served here do not.
            None,
            None,
            {a.member_id: bytes(a.assignment) for a in request.assignments},
        )
    return REPLY(
        ctx,
        throttle_time=datetime.timedelta(0),
        error_code=result.error,
        assignment=result.assignment,
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
