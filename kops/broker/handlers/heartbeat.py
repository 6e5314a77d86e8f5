"""Heartbeat (key 12): v0-3.

- Resets the member's session timer. REBALANCE_IN_PROGRESS tells a member of
  the current generation to rejoin; ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID /
  FENCED_INSTANCE_ID say it has been replaced or removed.
- v1+: throttle_time. v3+: group_instance_id.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode
from kio.schema.heartbeat import v0, v1, v2, v3

from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 12
MIN_VERSION = 0
MAX_VERSION = 3

Request = v0.HeartbeatRequest | v1.HeartbeatRequest | v2.HeartbeatRequest | v3.HeartbeatRequest
Response = v0.HeartbeatResponse | v1.HeartbeatResponse | v2.HeartbeatResponse | v3.HeartbeatResponse
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    coordinator = ctx.broker.coordinator(request.group_id)
    if coordinator is None:
        code = ErrorCode.coordinator_not_available
    else:
        code = coordinator.heartbeat(
            request.group_id,
            request.generation_id,
            request.member_id,
            request.group_instance_id if isinstance(request, v3.HeartbeatRequest) else None,
        )
    return REPLY(ctx, throttle_time=datetime.timedelta(0), error_code=code)


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
