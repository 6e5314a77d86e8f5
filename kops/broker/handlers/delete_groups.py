"""DeleteGroups (key 42): v0-1.

- Only groups without members can be deleted (NON_EMPTY_GROUP otherwise);
  unknown groups get GROUP_ID_NOT_FOUND. Deleting writes tombstones for the
  group's metadata and every committed offset to `__consumer_offsets`.
- The empty group id is a valid group id here, as in Kafka.
- v1 is identical to v0 (KIP-394 bump).
"""

from __future__ import annotations

import datetime

from kio.schema.delete_groups import v0, v1
from kio.schema.errors import ErrorCode

from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 42
MIN_VERSION = 0
MAX_VERSION = 1

Request = v0.DeleteGroupsRequest | v1.DeleteGroupsRequest
Response = v0.DeleteGroupsResponse | v1.DeleteGroupsResponse
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    coordinator = ctx.broker.coordinator()
    names = list(request.groups_names)
    outcome: list[tuple[str, ErrorCode]]
    if coordinator is None:
        outcome = [(name, ErrorCode.coordinator_not_available) for name in names]
    else:
        outcome = coordinator.delete_groups(names)
    results = tuple(
        ctx.make("DeletableGroupResult", group_id=name, error_code=code) for name, code in outcome
    )
    return REPLY(ctx, throttle_time=datetime.timedelta(0), results=results)


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
