"""ListGroups (key 16): v0-4.

- Every group the coordinator knows, including groups that only hold offsets
  (Empty, protocol type "").
- v1+: throttle_time. v4+: states_filter (case-insensitive state names) and
  each group's state.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode

from kops.broker.groups import coordinator_of
from kops.broker.handlers import RequestContext

API_KEY = 16
MIN_VERSION = 0
MAX_VERSION = 4


async def handle(ctx: RequestContext, request: object) -> object:
    coordinator = coordinator_of(ctx.broker)
    states = {s.lower() for s in getattr(request, "states_filter", ())} or None
    if coordinator is None:
        error, listed = ErrorCode.coordinator_not_available, []
    else:
        error, listed = coordinator.list_groups(states)
    groups = tuple(
        ctx.make("ListedGroup", group_id=gid, protocol_type=ptype, group_state=state)
        for gid, ptype, state in listed
    )
    return ctx.make(
        "ListGroupsResponse", throttle_time=datetime.timedelta(0), error_code=error, groups=groups
    )
