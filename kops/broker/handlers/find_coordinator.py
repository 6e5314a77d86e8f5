"""FindCoordinator (key 10): v0-2.

- key_type 0 (group): the coordinator is the leader of partition
  abs(javaStringHashCode(key)) % N of `__consumer_offsets`, as in Kafka; on a
  single broker that leader is this broker.
- key_type 1 (transaction) answers this broker too: transactional ids use the
  same placement and there is no other broker to send the client to.
- v1+: key_type, throttle_time, error_message.
"""

from __future__ import annotations

import datetime

from kio.schema.errors import ErrorCode

from kops.broker.groups import coordinator_of
from kops.broker.groups.storage import OFFSETS_TOPIC
from kops.broker.handlers import RequestContext

API_KEY = 10
MIN_VERSION = 0
MAX_VERSION = 2

GROUP, TRANSACTION = 0, 1


async def handle(ctx: RequestContext, request: object) -> object:
    key_type = getattr(request, "key_type", GROUP)
    coordinator = coordinator_of(ctx.broker)
    code, message, node = ErrorCode.none, None, -1
    if key_type not in (GROUP, TRANSACTION):
        code, message = ErrorCode.invalid_request, f"unknown key type {key_type}"
    elif coordinator is None or not coordinator.store.partitions:
        code = ErrorCode.coordinator_not_available
    else:
        partition = ctx.broker.partition(
            OFFSETS_TOPIC, coordinator.store.partition_for(request.key)
        )
        if partition is None or partition.leader != ctx.broker.node_id:
            code = ErrorCode.coordinator_not_available
        else:
            node = partition.leader
    host, port = ctx.broker.advertised if node >= 0 else ("", -1)
    return ctx.make(
        "FindCoordinatorResponse",
        throttle_time=datetime.timedelta(0),
        error_code=code,
        error_message=message,
        node_id=node,
        host=host,
        port=port,
    )
