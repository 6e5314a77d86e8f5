"""SyncGroup (key 14): v0-3.

- The leader sends every member's assignment; the others send none and wait
  for it (only their own connection waits). In Stable, a member gets its
  current assignment back at once.
- v1+: throttle_time. v3+: group_instance_id.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode

from kops.broker.groups import coordinator_of
from kops.broker.groups.group import SyncResult
from kops.broker.handlers import RequestContext

API_KEY = 14
MIN_VERSION = 0
MAX_VERSION = 3


async def handle(ctx: RequestContext, request: object) -> object:
    coordinator = coordinator_of(ctx.broker)
    if coordinator is None:
        result = SyncResult(ErrorCode.coordinator_not_available)
    else:
        result = await coordinator.sync_group(
            request.group_id,
            request.generation_id,
            request.member_id,
            getattr(request, "group_instance_id", None),
            # v5+ carry these for validation; the versions served here do not.
            getattr(request, "protocol_type", None),
            getattr(request, "protocol_name", None),
            {a.member_id: bytes(a.assignment) for a in request.assignments},
        )
    return ctx.make(
        "SyncGroupResponse",
        throttle_time=datetime.timedelta(0),
        error_code=result.error,
        assignment=result.assignment,
    )
