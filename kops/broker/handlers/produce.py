"""Produce (key 0): advertised v0-8, served v3-8.

- v0-2 carry message formats 0/1, which kops does not store; the range starts
  at 0 only because librdkafka before 2.11.1 disables compression unless
  Produce v0 is advertised (KAFKA-18659). Kafka 4.0 advertises them for the
  same reason and closes the connection of a client that sends one (KIP-896);
  kops answers instead: every partition UNSUPPORTED_VERSION (these responses
  have no message field), and the reason logged once per client id. They decode as v3 with a null
  transactional id (kops.protocol.messages).
- Record batches (magic 2) are validated by header and CRC-32C only; records
  are never decoded. Compressed batches are stored as produced.
- v8+ name the records at fault in record_errors (KIP-467), e.g. the keyless
  records of a batch refused by a compacted topic.
- acks=0 gets no response. acks=all on a partition whose ISR is smaller than
  min.insync.replicas gets NOT_ENOUGH_REPLICAS. On a replicated partition
  acks=all parks in the broker's produce purgatory until the high watermark
  passes the batch (then NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR shrank
  under min.insync.replicas meanwhile), REQUEST_TIMED_OUT at the request's
  timeout, NOT_LEADER_OR_FOLLOWER if leadership moved while it waited.
- Transactional batches (KIP-98) are appended like any other: the batch's
  transactional attribute starts the producer's transaction in the partition
  (kops.broker.log.transactions), and the coordinator's marker ends it. Version
  note: as in Kafka before KIP-890's verification, the partition is not checked
  against AddPartitionsToTxn, and the request's transactional id is not used.
  Control batches from clients are refused (INVALID_RECORD), as are writes to
  internal topics (INVALID_TOPIC_EXCEPTION).
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from kio.schema.errors import ErrorCode
from kio.schema.produce import v3, v4, v5, v6, v7, v8
from kio.schema.produce.v3 import response as v3_response
from kio.static.primitive import i32Timedelta, i64

from kops.broker.cluster.partition import AppendOutcome, Partition
from kops.broker.handlers import ApiHandler, Reply, RequestContext
from kops.broker.purgatory import DelayedOperation

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


_LEGACY_MESSAGE = (
    "Produce v{version} (message format 0/1) is not supported; kops stores record "
    "batches (magic 2, Produce v3+): upgrade the client or let it request ApiVersions"
)
_warned_legacy_clients: set[str | None] = set()


def _refuse_legacy(ctx: RequestContext, request: v3.ProduceRequest) -> v3.ProduceResponse | None:
    message = _LEGACY_MESSAGE.format(version=ctx.api_version)
    if ctx.client_id not in _warned_legacy_clients and len(_warned_legacy_clients) < 1000:
        _warned_legacy_clients.add(ctx.client_id)
        log.warning("client %r from %s: %s", ctx.client_id, ctx.peer, message)
    if request.acks == 0:
        return None
    topics = tuple(
        v3_response.TopicProduceResponse(
            name=topic.name,
            partition_responses=tuple(
                v3_response.PartitionProduceResponse(
                    index=data.index,
                    error_code=ErrorCode.unsupported_version,
                    base_offset=i64(-1),
                    log_append_time=None,
                )
                for data in topic.partition_data
            ),
        )
        for topic in request.topic_data
    )
    return v3.ProduceResponse(
        responses=topics, throttle_time=i32Timedelta.parse(datetime.timedelta(0))
    )


@dataclass(slots=True)
class _Result:
    index: int
    outcome: AppendOutcome
    partition: Partition | None = None


async def handle(ctx: RequestContext, request: Request) -> Response | None:
    if ctx.api_version < 3:
        # v0-2 arrive decoded by the v3 schema (kops.protocol.messages).
        return _refuse_legacy(ctx, request)  # type: ignore[arg-type]
    broker = ctx.broker
    acks = request.acks
    results: list[tuple[str, list[_Result]]] = []
    for topic in request.topic_data:
        answers = []
        for data in topic.partition_data:
            found = broker.leader_partition(topic.name, data.index)
            if acks not in (0, 1, -1):
                outcome = AppendOutcome(ErrorCode.invalid_required_acks)
            elif isinstance(found, ErrorCode):
                outcome = AppendOutcome(found)
            elif broker.is_internal(topic.name):
                # Only the broker writes its internal topics (as in Kafka).
                outcome = AppendOutcome(
                    ErrorCode.invalid_topic_exception,
                    message=f"cannot produce to internal topic {topic.name}",
                )
            else:
                outcome = found.append(data.records, acks=acks)
                answers.append(_Result(data.index, outcome, found))
                continue
            answers.append(_Result(data.index, outcome))
        results.append((topic.name, answers))
    waiting = [
        (name, r) for name, answers in results for r in answers if r.outcome.wait_for_offset >= 0
    ]
    if waiting:
        produce = DelayedProduce(ctx, waiting, request.timeout.total_seconds())
        keys = [(name, r.index) for name, r in waiting]
        if not broker.produces.try_complete_else_watch(produce, keys):
            await produce.wait()
    if acks == 0:
        return None
    topics = [
        ctx.make(
            "TopicProduceResponse",
            name=name,
            partition_responses=tuple(_partition_response(ctx, r) for r in answers),
        )
        for name, answers in results
    ]
    return REPLY(ctx, responses=tuple(topics), throttle_time=datetime.timedelta(0))


def _partition_response(ctx: RequestContext, result: _Result) -> object:
    outcome = result.outcome
    return ctx.make(
        "PartitionProduceResponse",
        index=result.index,
        error_code=outcome.error,
        base_offset=outcome.base_offset,
        log_append_time=_timestamp(outcome.log_append_time_ms),
        log_start_offset=outcome.log_start_offset,
        record_errors=tuple(
            ctx.make(
                "BatchIndexAndErrorMessage",
                batch_index=index,
                batch_index_error_message=reason,
            )
            for index, reason in outcome.record_errors
        ),
        error_message=outcome.message,
    )


class DelayedProduce(DelayedOperation):
    """acks=all on replicated partitions: done once the high watermark passed every batch.

    Expiry (the request's timeout) answers REQUEST_TIMED_OUT for the partitions
    still waiting, as Kafka does; their records may yet commit, which is why an
    idempotent producer's retry is safe.
    """

    def __init__(
        self, ctx: RequestContext, waiting: list[tuple[str, _Result]], delay: float
    ) -> None:
        super().__init__(delay)
        self._node_id = ctx.broker.node_id
        self._waiting = [r for _, r in waiting]

    def try_complete(self) -> bool:
        pending = []
        for result in self._waiting:
            assert result.partition is not None
            code = result.partition.acks_all_status(result.outcome.wait_for_offset, self._node_id)
            if code is None:
                pending.append(result)
            else:
                _settle(result, code)
        self._waiting = pending
        return self.force_complete() if not pending else False

    def on_expiration(self) -> None:
        self.try_complete()
        for result in self._waiting:
            _settle(result, ErrorCode.request_timed_out)

    def on_complete(self) -> None:
        pass


def _settle(result: _Result, code: ErrorCode) -> None:
    outcome = result.outcome
    outcome.wait_for_offset = -1
    if code != ErrorCode.none:
        outcome.error = code
        outcome.base_offset = -1


def _timestamp(ms: int) -> datetime.datetime | None:
    if ms < 0:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
