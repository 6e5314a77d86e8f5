"""DeleteGroups (key 42): v0-1.

- Only groups without members can be deleted (NON_EMPTY_GROUP otherwise);
  unknown groups get GROUP_ID_NOT_FOUND. Deleting writes tombstones for the
  group's metadata and every committed offset to `__consumer_offsets`.
- v1 is identical to v0 (KIP-394 bump).
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode

from kops.broker.groups import coordinator_of
from kops.broker.handlers import RequestContext

API_KEY = 42
MIN_VERSION = 0
MAX_VERSION = 1


async def handle(ctx: RequestContext, request: object) -> object:
    coordinator = coordinator_of(ctx.broker)
    names = list(request.groups_names)
    if coordinator is None:
        outcome = [(name, ErrorCode.coordinator_not_available) for name in names]
    else:
        outcome = coordinator.delete_groups(names)
    results = tuple(
        ctx.make("DeletableGroupResult", group_id=name, error_code=code) for name, code in outcome
    )
    return ctx.make("DeleteGroupsResponse", throttle_time=datetime.timedelta(0), results=results)
