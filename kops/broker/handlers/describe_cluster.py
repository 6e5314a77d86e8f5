"""DescribeCluster (key 60): v0. Used by admin clients' describe_cluster().

- include_cluster_authorized_operations: every cluster operation (kops has no
  authorizer; see kops.broker.authorized_operations), else "not requested".
"""

from __future__ import annotations

import datetime

from kio.schema.describe_cluster import v0
from kio.schema.errors import ErrorCode

from kops.broker.authorized_operations import Resource, authorized_operations
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 60
MIN_VERSION = 0
MAX_VERSION = 0

Request = v0.DescribeClusterRequest
Response = v0.DescribeClusterResponse
REPLY: Reply[Response] = Reply(API_KEY)


async def handle(ctx: RequestContext, request: Request) -> Response:
    broker = ctx.broker
    host, port = broker.advertised
    return REPLY(
        ctx,
        throttle_time=datetime.timedelta(0),
        error_code=ErrorCode.none,
        cluster_id=broker.cluster_id,
        controller_id=broker.node_id,
        brokers=(
            ctx.make("DescribeClusterBroker", broker_id=broker.node_id, host=host, port=port),
        ),
        cluster_authorized_operations=authorized_operations(
            Resource.CLUSTER, request.include_cluster_authorized_operations
        ),
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
