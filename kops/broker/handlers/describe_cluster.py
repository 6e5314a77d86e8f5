"""DescribeCluster (key 60): v0-2. Used by admin clients' describe_cluster().

- include_cluster_authorized_operations: every cluster operation (kops has no
  authorizer; see kops.broker.authorized_operations), else "not requested".
- Brokers: this one, or in a cluster the registered, unfenced brokers (v2
  include_fenced_brokers adds the fenced ones, with is_fenced); controller_id
  is the quorum leader (-1 while there is none).
- v1 endpoint_type: 1 (brokers) is answered; 2 (controllers) gets
  UNSUPPORTED_ENDPOINT_TYPE, as from a Kafka broker (KIP-919: ask a controller
  listener; kops serves the quorum on the broker listener, see DescribeQuorum).
"""

from __future__ import annotations

import datetime

from kio.schema.describe_cluster import v0, v1, v2
from kio.schema.errors import ErrorCode

from kops.broker.authorized_operations import Resource, authorized_operations
from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 60
MIN_VERSION = 0
MAX_VERSION = 2

Request = v0.DescribeClusterRequest | v1.DescribeClusterRequest | v2.DescribeClusterRequest
Response = v0.DescribeClusterResponse | v1.DescribeClusterResponse | v2.DescribeClusterResponse
REPLY: Reply[Response] = Reply(API_KEY)

_BROKERS_ENDPOINT = 1


async def handle(ctx: RequestContext, request: Request) -> Response:
    broker = ctx.broker
    endpoint_type = getattr(request, "endpoint_type", _BROKERS_ENDPOINT)
    include_fenced = getattr(request, "include_fenced_brokers", False)
    operations = authorized_operations(
        Resource.CLUSTER, request.include_cluster_authorized_operations
    )
    if endpoint_type != _BROKERS_ENDPOINT:
        return REPLY(
            ctx,
            throttle_time=datetime.timedelta(0),
            error_code=ErrorCode.unsupported_endpoint_type,
            error_message="this is a broker listener: ask for endpoint type 1 (brokers)",
            endpoint_type=endpoint_type,
            cluster_id=broker.cluster_id,
            controller_id=-1,
            brokers=(),
            cluster_authorized_operations=operations,
        )
    return REPLY(
        ctx,
        throttle_time=datetime.timedelta(0),
        error_code=ErrorCode.none,
        error_message=None,
        endpoint_type=_BROKERS_ENDPOINT,
        cluster_id=broker.cluster_id,
        controller_id=broker.controller_id,
        brokers=tuple(
            ctx.make(
                "DescribeClusterBroker",
                broker_id=b.node_id,
                host=b.host,
                port=b.port,
                rack=None,
                is_fenced=b.fenced,
            )
            for b in broker.cluster_brokers(include_fenced=include_fenced)
        ),
        cluster_authorized_operations=operations,
    )


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
