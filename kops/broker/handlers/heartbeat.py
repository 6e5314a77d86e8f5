"""Heartbeat (key 12): v0-3.

- Resets the member's session timer. REBALANCE_IN_PROGRESS tells a member of
  the current generation to rejoin; ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID /
  FENCED_INSTANCE_ID say it has been replaced or removed.
- v1+: throttle_time. v3+: group_instance_id.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode

from kops.broker.groups import coordinator_of
from kops.broker.handlers import RequestContext

API_KEY = 12
MIN_VERSION = 0
MAX_VERSION = 3


async def handle(ctx: RequestContext, request: object) -> object:
    coordinator = coordinator_of(ctx.broker)
    if coordinator is None:
        code = ErrorCode.coordinator_not_available
    else:
        code = coordinator.heartbeat(
            request.group_id,
            request.generation_id,
            request.member_id,
            getattr(request, "group_instance_id", None),
        )
    return ctx.make("HeartbeatResponse", throttle_time=datetime.timedelta(0), error_code=code)
