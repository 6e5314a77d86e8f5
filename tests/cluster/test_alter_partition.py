"""AlterPartition: the controller's handler and the leader's sender, across real brokers.

Topics have one replica for now (kops refuses more at creation,
MAX_REPLICATION_FACTOR), so no ISR can really shrink or grow here; the rules
for shrinks and expands are tested on the sans-io Controller
(tests/cluster/test_controller.py). Over the wire: who answers, every error
path, an ISR "change" to the ISR as it is (answered with the committed state),
proposals based on epochs a restart has moved on, and the sender's routing,
batching, replacing, retrying and timing out. The leader's broker epoch is
read from its log ("broker N registered (epoch E)"): no API tells it.

The sender runs in the test process, as one of the brokers would run it, with
a stand-in for its ClusterControl that says who the controller is.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, cast

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from kio.schema.alter_partition import v2, v3
from kio.schema.describe_topic_partitions import v0 as describe
from kio.schema.errors import ErrorCode
from kio.schema.types import BrokerId, TopicName
from kio.static.primitive import i8, i32, i64

from kops.broker.cluster.control import ClusterControl
from kops.broker.cluster.controller import ControllerError
from kops.broker.cluster.isr_changes import AlterPartitionSender
from kops.broker.cluster.metadata import MetadataImage, PartitionInfo
from kops.broker.cluster.replication import IsrProposal
from kops.protocol.client import send_request
from kops.pytest_plugin import requires_bundled_broker
from kops.testing import async_wait_until, wait_until
from tests.cluster.processes import Cluster, settle, wait_brokers

ALL_ACTIVE = {1: False, 2: False, 3: False}

Partition = tuple[int, int, Sequence[int], int]  # index, leader epoch, new ISR, partition epoch


# ---- helpers ------------------------------------------------------------------------------


def _hostport(cluster: Cluster, node: int) -> tuple[str, int]:
    host, port = cluster.address(node).rsplit(":", 1)
    return host, int(port)


def _describe(cluster: Cluster, node: int, topic: str) -> Any:
    """The topic as broker `node` describes it (DescribeTopicPartitions gives the topic id)."""
    request = describe.DescribeTopicPartitionsRequest(
        topics=(describe.request.TopicRequest(name=TopicName(topic)),),
        response_partition_limit=i32(100),
        cursor=None,
    )
    return send_request(*_hostport(cluster, node), request).topics[0]


def _create(cluster: Cluster, topic: str, partitions: int) -> uuid.UUID:
    """Create the topic; its id once every broker describes every partition with a leader."""
    admin = AdminClient({"bootstrap.servers": cluster.address(1)})
    admin.create_topics([NewTopic(topic, num_partitions=partitions)])[topic].result(timeout=30)

    def known(node: int) -> bool:
        found = _describe(cluster, node, topic)
        return found.error_code == ErrorCode.none and len(found.partitions) == partitions

    for node in cluster.brokers:
        wait_until(lambda node=node: known(node), timeout=20)
    topic_id = _describe(cluster, 1, topic).topic_id
    assert isinstance(topic_id, uuid.UUID)
    return topic_id


def _leaders(cluster: Cluster, node: int, topic: str) -> dict[int, int]:
    return {p.partition_index: p.leader_id for p in _describe(cluster, node, topic).partitions}


def _broker_epoch(cluster: Cluster, node: int) -> int:
    found = re.findall(rf"broker {node} registered \(epoch (\d+)\)", cluster.log_of(node))
    assert found, f"broker {node} has not registered"
    return int(found[-1])


def _alter_v3(
    cluster: Cluster,
    to: int,
    broker_id: int,
    broker_epoch: int,
    topics: Sequence[tuple[uuid.UUID, Sequence[Partition]]],
    *,
    recovery: int = 0,
) -> v3.AlterPartitionResponse:
    request = v3.AlterPartitionRequest(
        broker_id=BrokerId(broker_id),
        broker_epoch=i64(broker_epoch),
        topics=tuple(
            v3.request.TopicData(
                topic_id=topic_id,
                partitions=tuple(
                    v3.request.PartitionData(
                        partition_index=i32(index),
                        leader_epoch=i32(leader_epoch),
                        new_isr_with_epochs=tuple(
                            v3.request.BrokerState(broker_id=BrokerId(r), broker_epoch=i64(-1))
                            for r in isr
                        ),
                        leader_recovery_state=i8(recovery),
                        partition_epoch=i32(partition_epoch),
                    )
                    for index, leader_epoch, isr, partition_epoch in partitions
                ),
            )
            for topic_id, partitions in topics
        ),
    )
    response = send_request(*_hostport(cluster, to), request)
    assert isinstance(response, v3.AlterPartitionResponse)
    return response


def _alter_v2(
    cluster: Cluster, to: int, broker_id: int, broker_epoch: int, topic_id: uuid.UUID, p: Partition
) -> v2.AlterPartitionResponse:
    index, leader_epoch, isr, partition_epoch = p
    request = v2.AlterPartitionRequest(
        broker_id=BrokerId(broker_id),
        broker_epoch=i64(broker_epoch),
        topics=(
            v2.request.TopicData(
                topic_id=topic_id,
                partitions=(
                    v2.request.PartitionData(
                        partition_index=i32(index),
                        leader_epoch=i32(leader_epoch),
                        new_isr=tuple(BrokerId(r) for r in isr),
                        partition_epoch=i32(partition_epoch),
                    ),
                ),
            ),
        ),
    )
    response = send_request(*_hostport(cluster, to), request)
    assert isinstance(response, v2.AlterPartitionResponse)
    return response


def _answered(response: Any) -> list[tuple[int, ErrorCode, int, int, tuple[int, ...], int]]:
    """(partition, error, leader, leader epoch, ISR, partition epoch) for each answer."""
    assert response.error_code == ErrorCode.none
    return [
        (
            p.partition_index,
            p.error_code,
            p.leader_id,
            p.leader_epoch,
            tuple(p.isr),
            p.partition_epoch,
        )
        for t in response.topics
        for p in t.partitions
    ]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the tests that restart nothing; each uses topics of its own."""
    cluster = Cluster(tmp_path_factory.mktemp("alter-partition"))
    try:
        cluster.start_all()
        settle(cluster)
        wait_brokers(cluster, ALL_ACTIVE)
        yield cluster
    finally:
        cluster.close()


def _controller(cluster: Cluster) -> int:
    return settle(cluster).leader_id


# ---- the handler --------------------------------------------------------------------------


@requires_bundled_broker
def test_only_the_active_controller_answers(running: Cluster) -> None:
    topic_id = _create(running, "ap-routing", 3)
    controller = _controller(running)
    leaders = _leaders(running, controller, "ap-routing")
    index, leader = next(iter(leaders.items()))
    epoch = _broker_epoch(running, leader)
    unchanged: Partition = (index, 0, (leader,), 0)

    for other in (n for n in running.brokers if n != controller):
        refused = _alter_v3(running, other, leader, epoch, [(topic_id, [unchanged])])
        assert (refused.error_code, refused.topics) == (ErrorCode.not_controller, ())
        refused2 = _alter_v2(running, other, leader, epoch, topic_id, unchanged)
        assert (refused2.error_code, refused2.topics) == (ErrorCode.not_controller, ())

    # The ISR as it is: nothing to commit, answered with the committed state.
    current = (index, ErrorCode.none, leader, 0, (leader,), 0)
    response = _alter_v3(running, controller, leader, epoch, [(topic_id, [unchanged])])
    assert response.topics[0].topic_id == topic_id
    assert _answered(response) == [current]
    assert _answered(_alter_v2(running, controller, leader, epoch, topic_id, unchanged)) == [
        current
    ]
    after = _describe(running, controller, "ap-routing").partitions[index]
    assert (after.leader_id, after.leader_epoch, tuple(after.isr_nodes)) == (leader, 0, (leader,))


@requires_bundled_broker
def test_refusals_per_partition_and_for_the_whole_request(running: Cluster) -> None:
    topic_id = _create(running, "ap-refusals", 3)
    controller = _controller(running)
    leaders = _leaders(running, controller, "ap-refusals")
    index, leader = next(iter(leaders.items()))
    other_index, other_leader = next((i, b) for i, b in leaders.items() if b != leader)
    epoch = _broker_epoch(running, leader)
    stranger = next(b for b in running.brokers if b != leader)  # in no replica set of `index`

    response = _alter_v3(
        running,
        controller,
        leader,
        epoch,
        [
            (
                topic_id,
                [
                    (index, 0, (leader,), 0),
                    (index, 0, (leader,), 1),  # a partition epoch the partition never had
                    (index, -1, (leader,), 0),  # an older leader epoch
                    (index, 1, (leader,), 0),  # a newer one
                    (other_index, 0, (other_leader,), 0),  # led by another broker
                    (index, 0, (leader, stranger), 0),  # not a replica
                    (index, 0, (), 0),
                    (99, 0, (leader,), 0),
                ],
            ),
            (uuid.uuid4(), [(0, 0, (leader,), 0)]),
        ],
    )
    assert [(p, code) for p, code, *_ in _answered(response)] == [
        (index, ErrorCode.none),
        (index, ErrorCode.invalid_update_version),
        (index, ErrorCode.fenced_leader_epoch),
        (index, ErrorCode.not_leader_or_follower),
        (other_index, ErrorCode.not_leader_or_follower),
        (index, ErrorCode.invalid_request),
        (index, ErrorCode.invalid_request),
        (99, ErrorCode.unknown_topic_or_partition),
        (0, ErrorCode.unknown_topic_id),
    ]
    recovering = _alter_v3(
        running, controller, leader, epoch, [(topic_id, [(index, 0, (leader,), 0)])], recovery=1
    )
    assert [code for _, code, *_ in _answered(recovering)] == [ErrorCode.invalid_request]

    for broker_id, broker_epoch in ((leader, epoch + 100), (42, epoch)):
        stale = _alter_v3(
            running, controller, broker_id, broker_epoch, [(topic_id, [(index, 0, (leader,), 0)])]
        )
        assert (stale.error_code, stale.topics) == (ErrorCode.stale_broker_epoch, ())


@requires_bundled_broker
def test_a_restart_moves_the_epochs_a_proposal_is_checked_against(cluster: Cluster) -> None:
    """The restarted leader has a new broker epoch, and its partition new epochs."""
    controller = _controller(cluster)
    wait_brokers(cluster, ALL_ACTIVE)
    topic_id = _create(cluster, "ap-restart", 3)
    leaders = _leaders(cluster, controller, "ap-restart")
    index, victim = next((i, b) for i, b in leaders.items() if b != controller)
    old_epoch = _broker_epoch(cluster, victim)

    cluster.brokers[victim].kill()
    cluster.brokers[victim].start()
    wait_until(
        lambda: (
            (p := _describe(cluster, controller, "ap-restart").partitions[index]).leader_id
            == victim
            and p.leader_epoch > 0
        ),
        timeout=30,
        message=cluster.logs,
    )
    new_epoch = _broker_epoch(cluster, victim)
    assert new_epoch > old_epoch
    # Gone leaderless with the old incarnation, led by the new one: two changes.
    leader_epoch = _describe(cluster, controller, "ap-restart").partitions[index].leader_epoch
    assert leader_epoch == 2

    def ask(broker_epoch: int, p: Partition) -> Any:
        return _alter_v3(cluster, controller, victim, broker_epoch, [(topic_id, [p])])

    stale = ask(old_epoch, (index, leader_epoch, (victim,), 2))
    assert (stale.error_code, stale.topics) == (ErrorCode.stale_broker_epoch, ())
    assert [code for _, code, *_ in _answered(ask(new_epoch, (index, 2, (victim,), 0)))] == [
        ErrorCode.invalid_update_version
    ]
    assert [code for _, code, *_ in _answered(ask(new_epoch, (index, 0, (victim,), 2)))] == [
        ErrorCode.fenced_leader_epoch
    ]
    assert _answered(ask(new_epoch, (index, 2, (victim,), 2))) == [
        (index, ErrorCode.none, victim, 2, (victim,), 2)
    ]


# ---- the sender ---------------------------------------------------------------------------


class _Control:
    """The part of ClusterControl the sender uses: who the controller is, and deciding here."""

    def __init__(self, controllers: Sequence[int | None], image: MetadataImage | None = None):
        self.controllers = list(controllers)
        self.reads = 0
        self.image = image or MetadataImage()
        self.decisions: list[tuple[Any, ...]] = []
        self.outcomes: list[PartitionInfo | ControllerError | asyncio.Event] = []

    @property
    def controller_id(self) -> int | None:
        """The next of `controllers` at each read, then the last one for good."""
        self.reads += 1
        return self.controllers[min(self.reads, len(self.controllers)) - 1]

    async def alter_partition(self, *args: Any) -> PartitionInfo:
        self.decisions.append(args)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, asyncio.Event):
            await outcome.wait()
            raise AssertionError("never set")
        if isinstance(outcome, ControllerError):
            raise outcome
        return outcome


Outcome = tuple[ErrorCode, PartitionInfo | None]


def _sender(
    control: _Control,
    node_id: int,
    epoch: int,
    voters: dict[int, tuple[str, int]] | None = None,
    timeout: float = 10.0,
) -> AlterPartitionSender:
    return AlterPartitionSender(
        node_id, voters or {}, cast(ClusterControl, control), lambda: epoch, timeout=timeout
    )


def _submit(
    sender: AlterPartitionSender,
    topic: str,
    index: int,
    topic_id: uuid.UUID,
    leader_epoch: int,
    proposal: IsrProposal,
) -> asyncio.Future[Outcome]:
    done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    def on_done(code: ErrorCode, info: PartitionInfo | None) -> None:
        assert not done.done(), "answered twice"
        done.set_result((code, info))

    sender.submit(topic, index, str(topic_id), leader_epoch, proposal, on_done)
    return done


@requires_bundled_broker
def test_the_sender_finds_the_controller_and_batches_what_is_queued_together(
    running: Cluster,
) -> None:
    topic_id = _create(running, "ap-sender", 6)
    controller = _controller(running)
    leaders = _leaders(running, controller, "ap-sender")
    leader = next(b for b in sorted(set(leaders.values())) if b != controller)
    first, second = sorted(i for i, b in leaders.items() if b == leader)[:2]
    follower = next(b for b in running.brokers if b not in (controller, leader))
    voters = {n: _hostport(running, n) for n in running.brokers}

    async def run() -> tuple[list[Outcome], int]:
        # The first attempt goes to a broker that is not the controller (NOT_CONTROLLER).
        control = _Control([follower, controller])
        sender = _sender(control, leader, _broker_epoch(running, leader), voters)
        try:
            replaced = _submit(sender, "ap-sender", first, topic_id, 0, IsrProposal((leader,), 1))
            same = _submit(sender, "ap-sender", first, topic_id, 0, IsrProposal((leader,), 0))
            behind = _submit(sender, "ap-sender", second, topic_id, 0, IsrProposal((leader,), 5))
            async with asyncio.timeout(30):
                outcomes = list(await asyncio.gather(replaced, same, behind))
        finally:
            await sender.close()
        return outcomes, control.reads

    outcomes, reads = asyncio.run(run())
    assert outcomes == [
        (ErrorCode.operation_not_attempted, None),
        (ErrorCode.none, PartitionInfo("ap-sender", first, (), (leader,), leader, 0, 0)),
        (ErrorCode.invalid_update_version, None),
    ]
    assert reads == 2  # one request for both partitions, sent twice


@requires_bundled_broker
def test_the_sender_reports_a_stale_epoch_and_gives_up_without_a_controller(
    running: Cluster,
) -> None:
    topic_id = _create(running, "ap-sender-errors", 3)
    controller = _controller(running)
    leaders = _leaders(running, controller, "ap-sender-errors")
    index, leader = next((i, b) for i, b in leaders.items() if b != controller)
    follower = next(b for b in running.brokers if b not in (controller, leader))
    voters = {n: _hostport(running, n) for n in running.brokers}
    proposal = IsrProposal((leader,), 0)

    async def run() -> tuple[Outcome, Outcome, Outcome]:
        stale_sender = _sender(_Control([controller]), leader, 10_000, voters)
        lost_sender = _sender(_Control([follower]), leader, 1, voters, timeout=0.5)
        none_sender = _sender(_Control([None]), leader, 1, voters, timeout=0.3)
        try:
            async with asyncio.timeout(30):
                return (
                    await _submit(stale_sender, "ap-sender-errors", index, topic_id, 0, proposal),
                    await _submit(lost_sender, "ap-sender-errors", index, topic_id, 0, proposal),
                    await _submit(none_sender, "ap-sender-errors", index, topic_id, 0, proposal),
                )
        finally:
            for sender in (stale_sender, lost_sender, none_sender):
                await sender.close()

    assert asyncio.run(run()) == (
        (ErrorCode.stale_broker_epoch, None),
        (ErrorCode.request_timed_out, None),
        (ErrorCode.request_timed_out, None),
    )


def test_the_controllers_own_proposals_are_decided_in_process() -> None:
    info = PartitionInfo("t", 0, (1, 2), (1,), 1, 3, 8)
    topic_id = uuid.uuid4()

    async def run() -> tuple[list[Outcome], list[tuple[Any, ...]]]:
        control = _Control([1])
        control.outcomes = [
            ControllerError("moving", error_code=ErrorCode.not_controller),  # t-0
            ControllerError("fenced", error_code=ErrorCode.ineligible_replica),  # t-1
            info,  # t-0 again
        ]
        sender = _sender(control, 1, 7)
        try:
            retried = _submit(sender, "t", 0, topic_id, 3, IsrProposal((1,), 7))
            refused = _submit(sender, "t", 1, topic_id, 3, IsrProposal((1, 2), 7))
            async with asyncio.timeout(10):
                outcomes = list(await asyncio.gather(retried, refused))
        finally:
            await sender.close()
        return outcomes, control.decisions

    outcomes, decisions = asyncio.run(run())
    assert outcomes == [(ErrorCode.none, info), (ErrorCode.ineligible_replica, None)]
    assert decisions == [
        (1, 7, "t", 0, 3, (1,), 7),
        (1, 7, "t", 1, 3, (1, 2), 7),
        (1, 7, "t", 0, 3, (1,), 7),
    ]


def test_close_cancels_what_is_in_flight_and_later_submits_are_not_sent() -> None:
    async def run() -> tuple[bool, Outcome]:
        control = _Control([1])
        control.outcomes = [asyncio.Event()]
        sender = _sender(control, 1, 7)
        topic_id = uuid.uuid4()
        in_flight = _submit(sender, "t", 0, topic_id, 0, IsrProposal((1,), 0))
        await async_wait_until(lambda: control.decisions)
        async with asyncio.timeout(10):
            await sender.close()
        late = _submit(sender, "t", 0, topic_id, 0, IsrProposal((1,), 0))
        return in_flight.done(), await late

    assert asyncio.run(run()) == (False, (ErrorCode.operation_not_attempted, None))


def test_a_topic_id_must_be_a_uuid() -> None:
    async def run() -> None:
        sender = _sender(_Control([1]), 1, 7)
        try:
            with pytest.raises(ValueError):
                sender.submit("t", 0, "id-t", 0, IsrProposal((1,), 0), lambda code, info: None)
        finally:
            await sender.close()

    asyncio.run(run())
