"""AlterPartition (key 56): v2-3. A partition leader changes its partition's ISR.

- Answered by the active controller; every other broker answers NOT_CONTROLLER
  (top level, no topics), and so do a new quorum leader until its epoch's first
  entry has committed and a single broker, which has no controller, as for
  BrokerHeartbeat. Leaders send it to the quorum leader
  (kops.broker.cluster.isr_changes).
- Topics are named by topic id (v2 and v3; kio has no v0-1). v2 gives the ISR
  as ``new_isr``; v3 as ``new_isr_with_epochs``, each member with the broker
  epoch the leader saw it with (KIP-903; -1 skips the check): a joining
  replica whose registration has another epoch is INELIGIBLE_REPLICA.
- An unknown or stale broker epoch of the sender is a top-level
  STALE_BROKER_EPOCH, as Kafka refuses such a request whole; so is
  NOT_CONTROLLER when the role is lost before any partition was decided
  (lost later, each partition left gets it: the earlier ones may have committed).
- Per partition: UNKNOWN_TOPIC_ID for a topic id the controller does not know,
  the controller's refusal (``Controller.alter_partition`` lists them), or the
  partition as committed: leader, leader epoch, ISR and partition epoch. An
  unchanged ISR commits nothing and is answered with the current state.
- ``leader_recovery_state`` must be 0 (RECOVERED): kops never elects an
  unclean leader, so no partition recovers from one; 1 is INVALID_REQUEST.
- Each partition's change is its own metadata entry, in request order.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from kio.schema.alter_partition import v2, v3
from kio.schema.errors import ErrorCode

from kops.broker.cluster.controller import ControllerError
from kops.broker.cluster.metadata import PartitionInfo
from kops.broker.handlers import ApiHandler, Reply, RequestContext

if TYPE_CHECKING:
    from kops.broker.cluster.control import ClusterControl

API_KEY = 56
MIN_VERSION = 2
MAX_VERSION = 3

Request = v2.AlterPartitionRequest | v3.AlterPartitionRequest
Response = v2.AlterPartitionResponse | v3.AlterPartitionResponse
REPLY: Reply[Response] = Reply(API_KEY)

PartitionData = v2.request.PartitionData | v3.request.PartitionData

_WHOLE_REQUEST = (ErrorCode.not_controller, ErrorCode.stale_broker_epoch)


class _Refused(Exception):
    """The whole request is refused with this code."""

    def __init__(self, code: ErrorCode) -> None:
        super().__init__(code.name)
        self.code = code


def _members(data: PartitionData) -> tuple[tuple[int, ...], dict[int, int]]:
    """The proposed ISR and the broker epochs the leader gave for its members."""
    if isinstance(data, v3.request.PartitionData):
        states = data.new_isr_with_epochs
        return tuple(s.broker_id for s in states), {s.broker_id: s.broker_epoch for s in states}
    return tuple(data.new_isr), {}


async def handle(ctx: RequestContext, request: Request) -> Response:
    def answer(code: ErrorCode, topics: tuple[Any, ...] = ()) -> Response:
        return REPLY(ctx, throttle_time=datetime.timedelta(0), error_code=code, topics=topics)

    cluster = ctx.broker.cluster
    # Only a leader whose epoch has committed has an image that is not behind the log:
    # on any other broker a leader's registration or topic may be missing yet.
    if cluster is None or not cluster.quorum.node.leader_ready:
        return answer(ErrorCode.not_controller)
    image = cluster.image
    sender = image.brokers.get(request.broker_id)
    # First, as in Kafka: a request that names only unknown topics is still stale.
    if sender is None or sender.broker_epoch != request.broker_epoch:
        return answer(ErrorCode.stale_broker_epoch)
    names = {t.topic_id: t.name for t in image.topics.values()}
    decided = False

    async def alter(name: str | None, data: PartitionData) -> Any:
        nonlocal decided
        info: PartitionInfo | None = None
        code = ErrorCode.none
        if name is None:
            code = ErrorCode.unknown_topic_id
        elif data.leader_recovery_state != 0:
            code = ErrorCode.invalid_request
        else:
            code, info = await _decide(cluster, request, name, data)
            if code in _WHOLE_REQUEST and not decided:
                raise _Refused(code)
            decided = True
        return ctx.make(
            "PartitionData",
            partition_index=data.partition_index,
            error_code=code,
            leader_id=info.leader if info else -1,
            leader_epoch=info.leader_epoch if info else -1,
            isr=info.isr if info else (),
            leader_recovery_state=0,
            partition_epoch=info.partition_epoch if info else -1,
        )

    topics = []
    try:
        for topic in request.topics:
            name = names.get(str(topic.topic_id)) if topic.topic_id is not None else None
            partitions = [await alter(name, data) for data in topic.partitions]
            topics.append(
                ctx.make("TopicData", topic_id=topic.topic_id, partitions=tuple(partitions))
            )
    except _Refused as refused:
        return answer(refused.code)
    return answer(ErrorCode.none, tuple(topics))


async def _decide(
    cluster: ClusterControl, request: Request, name: str, data: PartitionData
) -> tuple[ErrorCode, PartitionInfo | None]:
    isr, epochs = _members(data)
    try:
        info = await cluster.alter_partition(
            request.broker_id,
            request.broker_epoch,
            name,
            data.partition_index,
            data.leader_epoch,
            isr,
            data.partition_epoch,
            member_epochs=epochs,
        )
    except ControllerError as exc:
        return exc.error_code, None
    return ErrorCode.none, info


API = ApiHandler(API_KEY, MIN_VERSION, MAX_VERSION, handle)
