"""Produce (key 0): advertised v0-8, served v3-8.

- v0-2 carry message formats 0/1, which kops does not store; the range starts
  at 0 only because librdkafka before 2.11.1 disables compression unless
  Produce v0 is advertised (KAFKA-18659). kio has no schema for them, so such
  a request closes its connection.
- Record batches (magic 2) are validated by header and CRC-32C only; records
  are never decoded. Compressed batches are stored as produced.
- acks=0 gets no response. acks=all on a partition whose ISR is smaller than
  min.insync.replicas gets NOT_ENOUGH_REPLICAS.
- Transactions are not supported: a transactional id is refused.
"""

from __future__ import annotations

import datetime
import logging

from kio.schema.errors import ErrorCode
from kio.schema.produce import v3, v4, v5, v6, v7, v8

from kops.broker.handlers import ApiHandler, Reply, RequestContext

API_KEY = 0
MIN_VERSION = 0
MAX_VERSION = 8

Request = (
    v3.ProduceRequest
    | v4.ProduceRequest
    | v5.ProduceRequest
    | v6.ProduceRequest
    | v7.ProduceRequest
    | v8.ProduceRequest
)
Response = (
    v3.ProduceResponse
    | v4.ProduceResponse
    | v5.ProduceResponse
    | v6.ProduceResponse
    | v7.ProduceResponse
    | v8.ProduceResponse
)
REPLY: Reply[Response] = Reply(API_KEY)

log = logging.getLogger("kops.broker.produce")


async def handle(ctx: RequestContext, request: Request) -> Response | None:
    broker = ctx.broker
    acks = request.acks
    topics = []
    for topic in request.topic_data:
        responses = []
        for data in topic.partition_data:
            code, base, log_start, append_time, message = ErrorCode.none, -1, -1, -1, None
            partition = broker.partition(topic.name, data.index)
            if acks not in (0, 1, -1):
                code = ErrorCode.invalid_required_acks
            elif request.transactional_id is not None:
                code, message = ErrorCode.invalid_request, "transactions are not supported by kops"
            elif partition is None:
                code = ErrorCode.unknown_topic_or_partition
            elif broker.is_internal(topic.name):
                # Only the broker writes its internal topics (as in Kafka).
                code = ErrorCode.invalid_topic_exception
                message = f"cannot produce to internal topic {topic.name}"
            else:
                result = partition.append(data.records, acks=acks)
                code, message = result.error, result.message
                base, append_time = result.base_offset, result.log_append_time_ms
                log_start = result.log_start_offset
            responses.append(
                ctx.make(
                    "PartitionProduceResponse",
                    index=data.index,
                    error_code=code,
                    base_offset=base,
                    log_append_time=_timestamp(append_time),
                    log_start_offset=log_start,
                    record_errors=(),
                    error_message=message,
                )
            )
        topics.append(
            ctx.make("TopicProduceResponse", name=topic.name, partition_responses=tuple(responses))
        )
    if acks == 0:
        return None
    return REPLY(ctx, responses=tuple(topics), throttle_time=datetime.timedelta(0))


def _timestamp(ms: int) -> datetime.datetime | None:
    if ms < 0:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
