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

from kops.broker.handlers import RequestContext
from kops.broker.log.partition_log import LogError

API_KEY = 0
MIN_VERSION = 0
MAX_VERSION = 8

log = logging.getLogger("kops.broker.produce")


async def handle(ctx: RequestContext, request: object) -> object | None:
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
            elif data.records is None or not len(data.records):
                code, message = ErrorCode.corrupt_message, "no record batch in the request"
            elif len(data.records) > partition.log.config.max_message_bytes:
                code = ErrorCode.message_too_large
            elif acks == -1 and len(partition.isr) < partition.min_insync_replicas:
                code = ErrorCode.not_enough_replicas
            else:
                try:
                    result = partition.append(data.records)
                    base, append_time = result.base_offset, result.log_append_time_ms
                    log_start = result.log_start_offset
                except LogError as exc:
                    code, message = exc.error_code, str(exc)
                    log_start = partition.log.log_start_offset
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
    return ctx.make("ProduceResponse", responses=tuple(topics), throttle_time=datetime.timedelta(0))


def _timestamp(ms: int) -> datetime.datetime | None:
    if ms < 0:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
