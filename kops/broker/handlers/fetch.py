"""Fetch (key 1): v4-11.

- Long polling: when fewer than min_bytes are ready, the request parks on
  every partition it asked for and a produce to any of them wakes it; it
  answers at max_wait otherwise.
- Limits: max_bytes for the response and partition_max_bytes per partition,
  except that the first partition with data always returns at least one
  whole batch (KIP-74).
- Consumers read up to the high watermark; bytes come from the segment files
  without decoding records.
- Fetch sessions (KIP-227) are never opened: session_id 0 means every fetch is
  a full fetch, which is always legal.
- v9+: current_leader_epoch is checked (FENCED_LEADER_EPOCH /
  UNKNOWN_LEADER_EPOCH).
- v11: rack_id is ignored; preferred_read_replica is always -1.
"""

from __future__ import annotations

import asyncio
import datetime

from kio.schema.errors import ErrorCode

from kops.broker.handlers import RequestContext
from kops.broker.log.partition_log import OffsetOutOfRangeError

API_KEY = 1
MIN_VERSION = 4
MAX_VERSION = 11


async def handle(ctx: RequestContext, request: object) -> object:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0, int(request.max_wait.total_seconds() * 1000)) / 1000
    while True:
        responses, total, had_error = _read_all(ctx, request)
        remaining = deadline - loop.time()
        if total >= request.min_bytes or had_error or remaining <= 0:
            break
        await _wait_for_data(ctx, request, remaining)
    return ctx.make(
        "FetchResponse",
        throttle_time=datetime.timedelta(0),
        error_code=ErrorCode.none,
        session_id=0,
        responses=tuple(responses),
    )


def _read_all(ctx: RequestContext, request: object) -> tuple[list, int, bool]:
    broker = ctx.broker
    budget = request.max_bytes
    total = 0
    had_error = False
    first_data = True
    responses = []
    for topic in request.topics:
        partitions = []
        for wanted in topic.partitions:
            code, records = ErrorCode.none, b""
            hw = log_start = -1
            partition = broker.partition(topic.topic, wanted.partition)
            if partition is None:
                code = ErrorCode.unknown_topic_or_partition
            elif code := partition.check_leader_epoch(wanted.current_leader_epoch):
                pass
            else:
                plog = partition.log
                hw, log_start = plog.high_watermark, plog.log_start_offset
                try:
                    if budget > 0 or first_data:
                        records = plog.read(
                            wanted.fetch_offset,
                            min(wanted.partition_max_bytes, max(budget, 0)),
                            hw,
                            min_one_batch=first_data,
                        )
                except OffsetOutOfRangeError:
                    code = ErrorCode.offset_out_of_range
            if code != ErrorCode.none:
                had_error = True
            if records:
                first_data = False
                budget -= len(records)
                total += len(records)
            partitions.append(
                ctx.make(
                    "PartitionData",
                    partition_index=wanted.partition,
                    error_code=code,
                    high_watermark=hw,
                    last_stable_offset=hw,
                    log_start_offset=log_start,
                    aborted_transactions=(),
                    preferred_read_replica=-1,
                    records=records,
                )
            )
        responses.append(
            ctx.make("FetchableTopicResponse", topic=topic.topic, partitions=tuple(partitions))
        )
    return responses, total, had_error


async def _wait_for_data(ctx: RequestContext, request: object, timeout: float) -> None:
    waiter = asyncio.get_running_loop().create_future()
    parked = []
    for topic in request.topics:
        for wanted in topic.partitions:
            partition = ctx.broker.partition(topic.topic, wanted.partition)
            if partition is not None:
                partition.park(waiter)
                parked.append(partition)
    try:
        await asyncio.wait_for(waiter, timeout)
    except TimeoutError:
        pass
    finally:
        for partition in parked:
            partition.unpark(waiter)
