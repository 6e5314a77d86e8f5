"""The sans-io controller: registration, sessions, fencing, elections, topics, ISR changes.

The scenario tests follow Kafka's controller behaviour one rule at a time; the
seeded loop at the end drives random operation sequences (with proposals that
fail) and checks the partition invariants after every step. A failing seed
prints ``KOPS_CONTROLLER_SEED=N``; set it to re-run that seed alone, traced.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from kio.schema.errors import ErrorCode

from kops.broker.cluster.controller import (
    Controller,
    ControllerConfig,
    ControllerError,
    HeartbeatOutcome,
    Registration,
)
from kops.broker.cluster.metadata import (
    ChangePartition,
    CreatePartition,
    CreateTopic,
    FenceBroker,
    MetadataImage,
    MetadataRecord,
    PartitionInfo,
    RegisterBroker,
    RemoveTopic,
    UnfenceBroker,
)
from tests.cluster.seeded import chunked, reproducible

TIMEOUT = 3000


class Cluster:
    """An image, its controller, and the caller's part: commit what the controller returns."""

    def __init__(self, *brokers: int, now: int = 0) -> None:
        self.image = MetadataImage()
        self.controller = Controller(self.image, ControllerConfig(session_timeout_ms=TIMEOUT))
        self.controller.activate(now)
        self.epochs: dict[int, int] = {}
        for b in brokers:
            self.join(b, now)

    def commit(self, records: Sequence[MetadataRecord]) -> None:
        if records:
            self.image.apply(records, self.image.offset + 1)

    def join(self, broker_id: int, now: int, incarnation: str | None = None) -> None:
        """Register, catch up and heartbeat until unfenced."""
        reg = self.controller.register(
            broker_id, incarnation or f"inc{broker_id}", "localhost", 9090 + broker_id, now
        )
        self.commit(reg.records)
        self.epochs[broker_id] = reg.broker_epoch
        self.commit(self.beat(broker_id, now).records)
        assert not self.image.brokers[broker_id].fenced

    def beat(self, broker_id: int, now: int, *, shut_down: bool = False) -> HeartbeatOutcome:
        return self.controller.heartbeat(
            broker_id, self.epochs[broker_id], self.image.offset, now, shut_down
        )

    def beat_all(self, now: int, *brokers: int) -> None:
        for b in brokers:
            self.commit(self.beat(b, now).records)

    def topic(self, name: str, partitions: int, rf: int) -> None:
        self.commit(self.controller.create_topic(name, partitions, rf, {}, f"id-{name}"))

    def p(self, topic: str, partition: int) -> PartitionInfo:
        return self.image.partitions[(topic, partition)]


# ---- registration and heartbeats ----------------------------------------------------------


def test_a_registration_starts_fenced_and_unfences_once_caught_up() -> None:
    c = Cluster()
    reg = c.controller.register(1, "inc1", "h", 9092, 0)
    assert reg == Registration(1, (RegisterBroker(1, "inc1", 1, "h", 9092),))
    c.image.apply(reg.records, 5)
    assert c.image.brokers[1].fenced and c.image.brokers[1].registered_offset == 5

    behind = c.controller.heartbeat(1, 1, 4, 10)
    assert behind == HeartbeatOutcome(ErrorCode.none, False, True, False, ())
    caught_up = c.controller.heartbeat(1, 1, 5, 20)
    assert caught_up == HeartbeatOutcome(ErrorCode.none, True, False, False, (UnfenceBroker(1, 1),))
    c.commit(caught_up.records)
    assert c.image.live_brokers() == [1]
    assert c.controller.heartbeat(1, 1, 6, 30) == HeartbeatOutcome(
        ErrorCode.none, True, False, False, ()
    )


def test_a_retried_registration_changes_nothing_and_epochs_increase() -> None:
    c = Cluster(1, 2)
    assert c.epochs == {1: 1, 2: 2}
    assert c.controller.register(1, "inc1", "h", 1, 100) == Registration(1, ())
    assert c.image.next_broker_epoch == 3


def test_heartbeat_from_an_unknown_broker_or_an_old_epoch_is_stale() -> None:
    c = Cluster(1)
    stale = HeartbeatOutcome(ErrorCode.stale_broker_epoch, False, True, False, ())
    assert c.controller.heartbeat(7, 1, 0, 0) == stale
    assert c.controller.heartbeat(1, 2, 0, 0) == stale
    c.join(1, 10, incarnation="restarted")
    assert c.epochs[1] == 2
    assert c.controller.heartbeat(1, 1, c.image.offset, 20) == stale


def test_invalid_registrations_are_refused() -> None:
    c = Cluster()
    for args in [(-1, "i", 1), (1, "", 1), (1, "i", 70000)]:
        with pytest.raises(ControllerError) as exc:
            c.controller.register(args[0], args[1], "h", args[2], 0)
        assert exc.value.error_code is ErrorCode.invalid_request


def test_a_restarted_broker_gives_up_its_leaderships_when_it_registers_again() -> None:
    c = Cluster(1, 2)
    c.topic("t", 2, 2)
    assert (c.p("t", 0).leader, c.p("t", 1).leader) == (1, 2)
    reg = c.controller.register(1, "new", "h", 1, 10)
    assert reg.records == (
        RegisterBroker(1, "new", 3, "h", 1),
        ChangePartition("t", 0, (2,), 2, 1, 1),
        ChangePartition("t", 1, (2,), 2, 0, 1),
    )
    c.commit(reg.records)
    assert c.image.brokers[1].fenced


def test_a_failed_registration_is_decided_again() -> None:
    c = Cluster()
    first = c.controller.register(1, "inc1", "h", 1, 0)
    # never committed: the broker retries, and the heartbeat it might send is stale
    assert (
        c.controller.heartbeat(1, first.broker_epoch, 0, 10).error is ErrorCode.stale_broker_epoch
    )
    assert c.controller.register(1, "inc1", "h", 1, 20) == first


# ---- sessions and fencing -----------------------------------------------------------------


def test_session_expiry_fences_and_moves_leadership_to_the_first_isr_replica() -> None:
    c = Cluster(1, 2, 3)
    c.topic("t", 3, 3)
    assert [c.p("t", i).replicas for i in range(3)] == [(1, 2, 3), (2, 3, 1), (3, 1, 2)]
    c.beat_all(2000, 2, 3)
    assert c.controller.next_deadline_ms() == TIMEOUT + 1
    assert c.controller.expire(TIMEOUT) == []
    entries = c.controller.expire(TIMEOUT + 1)
    assert entries == [
        (
            FenceBroker(1, 1),
            ChangePartition("t", 0, (2, 3), 2, 1, 1),
            ChangePartition("t", 1, (2, 3), 2, 0, 1),
            ChangePartition("t", 2, (3, 2), 3, 0, 1),
        )
    ]
    c.commit(entries[0])
    assert c.image.live_brokers() == [2, 3]
    assert c.controller.expire(TIMEOUT + 1) == []
    assert c.controller.next_deadline_ms() == 2000 + TIMEOUT + 1


def test_the_last_isr_member_keeps_its_place_and_leads_again_when_it_returns() -> None:
    c = Cluster(1, 2)
    c.topic("t", 1, 2)
    c.beat_all(TIMEOUT, 1)
    (entry,) = c.controller.expire(TIMEOUT + 1)  # broker 2 is silent
    c.commit(entry)
    assert c.p("t", 0) == PartitionInfo("t", 0, (1, 2), (1,), 1, 0, 1)

    (entry,) = c.controller.expire(2 * TIMEOUT + 1)  # now broker 1, the last ISR member
    assert entry == (FenceBroker(1, 1), ChangePartition("t", 0, (1,), -1, 1, 2))
    c.commit(entry)
    assert c.p("t", 0).leader == -1 and c.p("t", 0).isr == (1,)
    assert c.controller.next_deadline_ms() is None

    back = c.beat(2, 10_000)  # broker 2 is not in the ISR: no unclean election
    assert back.records == (UnfenceBroker(2, 2),)
    c.commit(back.records)
    assert c.p("t", 0).leader == -1
    back = c.beat(1, 10_000)
    assert back.records == (UnfenceBroker(1, 1), ChangePartition("t", 0, (1,), 1, 2, 3))
    c.commit(back.records)
    assert c.p("t", 0) == PartitionInfo("t", 0, (1, 2), (1,), 1, 2, 3)


def test_brokers_expiring_together_are_fenced_one_entry_each_in_order() -> None:
    c = Cluster(1, 2, 3)
    c.topic("t", 3, 3)
    c.beat_all(TIMEOUT, 3)
    entries = c.controller.expire(TIMEOUT + 1)
    assert [e[0] for e in entries] == [FenceBroker(1, 1), FenceBroker(2, 2)]
    for entry in entries:
        c.commit(entry)  # each entry was decided on the image the previous one leaves
    assert all(c.p("t", i).isr == (3,) and c.p("t", i).leader == 3 for i in range(3))


def test_a_new_controller_restarts_every_session_and_fences_nobody() -> None:
    c = Cluster(1, 2)
    c.topic("t", 2, 2)
    later = 10 * TIMEOUT
    successor = Controller(c.image, ControllerConfig(session_timeout_ms=TIMEOUT))
    successor.activate(later)
    assert successor.expire(later) == []
    assert successor.expire(later + TIMEOUT) == []
    assert successor.next_deadline_ms() == later + TIMEOUT + 1
    assert [e[0] for e in successor.expire(later + TIMEOUT + 1)] == [
        FenceBroker(1, 1),
        FenceBroker(2, 2),
    ]

    c.controller.activate(later)  # the old controller, active again after losing the quorum
    assert c.controller.expire(later + TIMEOUT) == []


def test_a_new_controller_counts_the_former_controllers_silence_from_its_last_contact() -> None:
    c = Cluster(1, 2, 3)
    c.topic("t", 3, 3)
    later = 10 * TIMEOUT
    silent_since = later - 1200  # the election took this long after broker 1 went quiet
    successor = Controller(c.image, ControllerConfig(session_timeout_ms=TIMEOUT))
    successor.activate(later, {1: silent_since, 99: 0})  # 99: not a registered broker
    assert successor.next_deadline_ms() == silent_since + TIMEOUT + 1
    assert successor.expire(silent_since + TIMEOUT) == []
    (entry,) = successor.expire(silent_since + TIMEOUT + 1)
    assert entry[0] == FenceBroker(1, 1)  # the others keep a full session from `later`
    c.commit(entry)
    assert all(c.p("t", i).leader in (2, 3) and 1 not in c.p("t", i).isr for i in range(3))
    # A contact newer than the activation never lengthens a session.
    fresh = Controller(c.image, ControllerConfig(session_timeout_ms=TIMEOUT))
    fresh.activate(later, {2: later + 5000})
    assert fresh.next_deadline_ms() == later + TIMEOUT + 1


def test_a_closed_heartbeat_connection_cuts_the_session_to_the_grace() -> None:
    c = Cluster(1, 2, 3)
    c.topic("t", 3, 3)
    c.beat_all(1000, 3)
    grace = c.controller.config.connection_grace_ms
    c.controller.connection_lost(1, 1200)
    assert c.controller.next_deadline_ms() == 1200 + grace + 1
    assert c.controller.expire(1200 + grace) == []
    (entry,) = c.controller.expire(1200 + grace + 1)
    assert entry[0] == FenceBroker(1, 1)
    # A broker that heartbeats again in time keeps a whole session from that heartbeat.
    c.controller.connection_lost(2, 1300)
    c.beat(2, 1300 + grace)
    assert [e[0] for e in c.controller.expire(1300 + grace + 1)] == [FenceBroker(1, 1)]
    assert all(e[0] != FenceBroker(2, 2) for e in c.controller.expire(1300 + grace + TIMEOUT))
    # It never lengthens a session: a broker silent for longer is fenced as before.
    c.controller.connection_lost(3, 10**6)
    assert any(e[0] == FenceBroker(3, 3) for e in c.controller.expire(10**6))
    c.controller.connection_lost(99, 0)  # unknown: nothing to cut


def test_an_unactivated_controller_starts_clocks_instead_of_fencing() -> None:
    c = Cluster(1)
    lazy = Controller(c.image)
    assert lazy.next_deadline_ms() == 0
    assert lazy.expire(50_000) == []
    assert lazy.next_deadline_ms() == 50_000 + 3000 + 1


def test_failed_fencing_is_decided_again() -> None:
    c = Cluster(1, 2)
    c.topic("t", 1, 2)
    c.beat_all(TIMEOUT, 2)
    first = c.controller.expire(TIMEOUT + 1)
    assert first and c.controller.expire(TIMEOUT + 1) == first  # the first was never committed


# ---- controlled shutdown ------------------------------------------------------------------


def test_controlled_shutdown_moves_leaderships_then_lets_the_broker_go() -> None:
    c = Cluster(1, 2)
    c.topic("t", 2, 2)
    leaving = c.beat(1, 10, shut_down=True)
    assert leaving == HeartbeatOutcome(
        ErrorCode.none,
        True,
        True,
        False,
        (
            FenceBroker(1, 1),
            ChangePartition("t", 0, (2,), 2, 1, 1),
            ChangePartition("t", 1, (2,), 2, 0, 1),
        ),
    )
    c.commit(leaving.records)
    assert c.image.partitions_led_by(1) == []
    again = c.beat(1, 20, shut_down=True)
    assert again == HeartbeatOutcome(ErrorCode.none, True, True, True, ())


def test_controlled_shutdown_of_a_broker_leading_nothing_is_immediate() -> None:
    c = Cluster(1, 2)
    c.topic("t", 1, 1)  # on broker 1 alone
    follower = c.beat(2, 10, shut_down=True)
    assert follower == HeartbeatOutcome(ErrorCode.none, True, True, True, (FenceBroker(2, 2),))
    c.commit(follower.records)
    assert c.beat(2, 20, shut_down=True).records == ()

    last = c.beat(1, 30, shut_down=True)  # the only ISR member: leaderless, ISR kept
    assert last.records == (FenceBroker(1, 1), ChangePartition("t", 0, (1,), -1, 1, 1))
    assert not last.should_shut_down
    c.commit(last.records)
    assert c.beat(1, 40, shut_down=True).should_shut_down


# ---- topics and preferred leaders ---------------------------------------------------------


def test_create_topic_assigns_round_the_unfenced_brokers() -> None:
    c = Cluster(1, 2, 3, 4)
    c.commit(c.controller.heartbeat(3, 3, 0, 0, want_shut_down=True).records)  # 3 is fenced
    records = c.controller.create_topic(
        "a", 3, 2, {"retention.ms": "1", "cleanup.policy": "x"}, "A"
    )
    assert records == (
        CreateTopic("a", "A", (("cleanup.policy", "x"), ("retention.ms", "1"))),
        CreatePartition("a", 0, (1, 2), (1, 2), 1),
        CreatePartition("a", 1, (2, 4), (2, 4), 2),
        CreatePartition("a", 2, (4, 1), (4, 1), 4),
    )
    c.commit(records)
    second = c.controller.create_topic("b", 2, 3, {}, "B")  # starts one broker further on
    assert second[1:] == (
        CreatePartition("b", 0, (2, 4, 1), (2, 4, 1), 2),
        CreatePartition("b", 1, (4, 1, 2), (4, 1, 2), 4),
    )


@pytest.mark.parametrize(
    ("name", "partitions", "rf", "topic_id", "code"),
    [
        ("t", 1, 1, "new", ErrorCode.topic_already_exists),
        ("u", 0, 1, "new", ErrorCode.invalid_partitions),
        ("u", -1, 1, "new", ErrorCode.invalid_partitions),
        ("u", 1, 0, "new", ErrorCode.invalid_replication_factor),
        ("u", 1, 3, "new", ErrorCode.invalid_replication_factor),
        ("u/v", 1, 1, "new", ErrorCode.invalid_topic_exception),
        ("u", 1, 1, "id-t", ErrorCode.invalid_request),
    ],
)
def test_create_topic_errors(
    name: str, partitions: int, rf: int, topic_id: str, code: ErrorCode
) -> None:
    c = Cluster(1, 2, 3)
    c.topic("t", 1, 1)
    c.commit(c.beat(3, 0, shut_down=True).records)  # two unfenced brokers left
    with pytest.raises(ControllerError) as exc:
        c.controller.create_topic(name, partitions, rf, {}, topic_id)
    assert exc.value.error_code is code


def test_create_topic_with_no_unfenced_broker() -> None:
    c = Cluster()
    with pytest.raises(ControllerError) as exc:
        c.controller.create_topic("t", 1, 1, {}, "t")
    assert exc.value.error_code is ErrorCode.invalid_replication_factor


def test_delete_create_partitions_and_alter_configs_go_through_the_image() -> None:
    c = Cluster(1, 2, 3)
    c.topic("t", 2, 2)
    added = c.controller.create_partitions("t", 4)
    assert [type(r) for r in added] == [CreatePartition, CreatePartition]
    assert [(r.partition, len(r.replicas)) for r in added] == [(2, 2), (3, 2)]
    c.commit(added)
    assert c.image.topics["t"].partition_count == 4
    with pytest.raises(ControllerError) as exc:
        c.controller.create_partitions("t", 4)
    assert exc.value.error_code is ErrorCode.invalid_partitions

    change = c.controller.alter_topic_configs("t", {"retention.ms": "5", "cleanup.policy": "c"})
    c.commit(change)
    assert c.image.topics["t"].configs == (("cleanup.policy", "c"), ("retention.ms", "5"))
    assert c.controller.alter_topic_configs("t", {"cleanup.policy": "c", "retention.ms": "5"}) == ()

    c.commit(c.controller.delete_topic("t"))
    assert "t" not in c.image.topics and not c.image.partitions
    for call in (
        lambda: c.controller.delete_topic("t"),
        lambda: c.controller.create_partitions("t", 9),
        lambda: c.controller.alter_topic_configs("t", {}),
    ):
        with pytest.raises(ControllerError) as exc:
            call()
        assert exc.value.error_code is ErrorCode.unknown_topic_or_partition


def test_new_partitions_need_as_many_unfenced_brokers_as_the_topic_has_replicas() -> None:
    c = Cluster(1, 2)
    c.topic("t", 1, 2)
    c.commit(c.beat(2, 0, shut_down=True).records)
    with pytest.raises(ControllerError) as exc:
        c.controller.create_partitions("t", 2)
    assert exc.value.error_code is ErrorCode.invalid_replication_factor


def test_preferred_leader_election_returns_leadership_to_the_first_replica() -> None:
    c = Cluster(1, 2, 3)
    c.topic("t", 3, 2)  # t-0 [1,2], t-1 [2,3], t-2 [3,1]
    assert c.controller.elect_preferred_leaders() == ()
    c.beat_all(TIMEOUT, 2, 3)
    c.commit(c.controller.expire(TIMEOUT + 1)[0])
    c.beat_all(TIMEOUT + 2, 1)
    assert c.p("t", 0).leader == 2 and c.controller.elect_preferred_leaders() == ()
    # the leader's AlterPartition brings broker 1 back into the ISR of t-0 only
    c.commit([ChangePartition("t", 0, (2, 1), 2, 1, 2)])
    election = c.controller.elect_preferred_leaders()
    assert election == (ChangePartition("t", 0, (2, 1), 1, 2, 3),)
    c.commit(election)
    assert c.controller.elect_preferred_leaders() == ()


def test_unclean_leader_election_is_not_implemented() -> None:
    with pytest.raises(ValueError):
        ControllerConfig(unclean_leader_election=True)
    with pytest.raises(ValueError):
        ControllerConfig(session_timeout_ms=0)


# ---- ISR changes (AlterPartition) ---------------------------------------------------------


def test_alter_partition_shrinks_then_expands_the_isr() -> None:
    c = Cluster(1, 2, 3)
    c.topic("t", 1, 3)
    assert c.p("t", 0) == PartitionInfo("t", 0, (1, 2, 3), (1, 2, 3), 1, 0, 0)
    shrink = c.controller.alter_partition(1, c.epochs[1], "t", 0, 0, (1, 2), 0)
    assert shrink == (ChangePartition("t", 0, (1, 2), 1, 0, 1),)
    c.commit(shrink)
    assert c.p("t", 0) == PartitionInfo("t", 0, (1, 2, 3), (1, 2), 1, 0, 1)

    expand = c.controller.alter_partition(1, c.epochs[1], "t", 0, 0, (1, 2, 3), 1)
    assert expand == (ChangePartition("t", 0, (1, 2, 3), 1, 0, 2),)
    c.commit(expand)
    assert c.p("t", 0) == PartitionInfo("t", 0, (1, 2, 3), (1, 2, 3), 1, 0, 2)
    # the same proposal again is based on an epoch that has moved on
    with pytest.raises(ControllerError) as exc:
        c.controller.alter_partition(1, c.epochs[1], "t", 0, 0, (1, 2, 3), 1)
    assert exc.value.error_code is ErrorCode.invalid_update_version


def test_alter_partition_to_the_current_isr_changes_nothing() -> None:
    c = Cluster(1, 2)
    c.topic("t", 1, 2)
    assert c.controller.alter_partition(1, c.epochs[1], "t", 0, 0, (1, 2), 0) == ()
    assert c.controller.alter_partition(1, c.epochs[1], "t", 0, 0, (2, 1), 0) == ()


def _isr_scene() -> Cluster:
    """t-0 on replicas 1, 2, 3, led by 2 in leader epoch 1 at partition epoch 2, ISR (2,).

    Broker 1 is unfenced and out of the ISR (it may join), broker 3 fenced and
    out of it (it may not), broker 4 unfenced and no replica.
    """
    c = Cluster(1, 2, 3, 4)
    c.topic("t", 1, 3)
    c.commit(c.beat(1, 10, shut_down=True).records)  # leadership moves to 2
    c.commit(c.beat(3, 10, shut_down=True).records)
    c.commit(c.beat(1, 20).records)  # back, unfenced, not in the ISR
    assert c.p("t", 0) == PartitionInfo("t", 0, (1, 2, 3), (2,), 2, 1, 2)
    assert not c.image.brokers[1].fenced and c.image.brokers[3].fenced
    return c


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"broker_id": 7}, ErrorCode.stale_broker_epoch),
        ({"broker_epoch": 99}, ErrorCode.stale_broker_epoch),
        ({"broker_epoch": 99, "topic": "u"}, ErrorCode.stale_broker_epoch),
        ({"topic": "u"}, ErrorCode.unknown_topic_or_partition),
        ({"partition": 1}, ErrorCode.unknown_topic_or_partition),
        ({"broker_id": 4}, ErrorCode.not_leader_or_follower),
        ({"broker_id": 1}, ErrorCode.not_leader_or_follower),
        ({"leader_epoch": 0}, ErrorCode.fenced_leader_epoch),
        ({"leader_epoch": 2}, ErrorCode.not_leader_or_follower),
        ({"partition_epoch": 1}, ErrorCode.invalid_update_version),
        ({"partition_epoch": 3}, ErrorCode.invalid_update_version),
        ({"new_isr": ()}, ErrorCode.invalid_request),
        ({"new_isr": (2, 1, 2)}, ErrorCode.invalid_request),
        ({"new_isr": (2, 4)}, ErrorCode.invalid_request),
        ({"new_isr": (1,)}, ErrorCode.invalid_request),
        ({"new_isr": (2, 3)}, ErrorCode.ineligible_replica),
        ({"new_isr": (2, 1, 3)}, ErrorCode.ineligible_replica),
        ({"member_epochs": {1: 2}}, ErrorCode.ineligible_replica),
        # Kafka's order: the epochs before who leads, the partition epoch before the ISR
        ({"broker_id": 4, "leader_epoch": 0}, ErrorCode.fenced_leader_epoch),
        ({"broker_id": 4, "partition_epoch": 3}, ErrorCode.invalid_update_version),
        ({"partition_epoch": 1, "new_isr": ()}, ErrorCode.invalid_update_version),
        ({"new_isr": (1,), "partition": 5}, ErrorCode.unknown_topic_or_partition),
    ],
)
def test_alter_partition_refusals(change: dict[str, object], code: ErrorCode) -> None:
    c = _isr_scene()
    request: dict[str, object] = {
        "broker_id": 2,
        "broker_epoch": c.epochs[2],
        "topic": "t",
        "partition": 0,
        "leader_epoch": 1,
        "new_isr": (2, 1),
        "partition_epoch": 2,
    }
    if change.get("broker_id") in c.epochs and "broker_epoch" not in change:
        request["broker_epoch"] = c.epochs[change["broker_id"]]  # type: ignore[index]
    request.update(change)
    with pytest.raises(ControllerError) as exc:
        c.controller.alter_partition(**request)  # type: ignore[arg-type]
    assert exc.value.error_code is code, exc.value.message
    # the scene as given is accepted: each refusal is down to its change alone
    assert c.controller.alter_partition(2, c.epochs[2], "t", 0, 1, (2, 1), 2)


def test_a_replica_joins_with_the_epoch_the_leader_saw_or_none() -> None:
    c = _isr_scene()
    expected = (ChangePartition("t", 0, (2, 1), 2, 1, 3),)
    for seen in ({}, {1: -1}, {1: c.epochs[1]}, {2: 99}):  # members that stay are not checked
        assert (
            c.controller.alter_partition(2, c.epochs[2], "t", 0, 1, (2, 1), 2, member_epochs=seen)
            == expected
        )
    c.commit(expected)
    assert c.p("t", 0) == PartitionInfo("t", 0, (1, 2, 3), (2, 1), 2, 1, 3)
    # a fenced leader (controlled shutdown) leads nothing: its proposal is refused
    c.commit(c.beat(2, 30, shut_down=True).records)
    assert c.p("t", 0).leader == 1
    with pytest.raises(ControllerError) as exc:
        c.controller.alter_partition(2, c.epochs[2], "t", 0, 1, (2, 1), 3)
    assert exc.value.error_code is ErrorCode.fenced_leader_epoch


# ---- random operation sequences -----------------------------------------------------------

SEEDS = 1000
CHUNK = 100
STEPS = 300
NAMES = ("a", "b", "c", "d", "e")


@dataclass
class Node:
    incarnation: int = 0
    epoch: int = -1
    shutting_down: bool = False
    running: bool = True


class Run:
    """One seed: random calls the caller could make, each result committed or lost."""

    def __init__(self, seed: int, *, verbose: bool = False) -> None:
        self.rng = random.Random(seed)
        self.verbose = verbose
        self.trace: list[str] = []
        self.image = MetadataImage()
        self.config = ControllerConfig(session_timeout_ms=TIMEOUT)
        self.controller = Controller(self.image, self.config)
        self.now = 0
        self.controller.activate(self.now)
        self.nodes = {b: Node() for b in range(1, 6)}
        self.sessions: dict[int, int] = {}
        self.topic_ids = 0

    def log(self, line: str) -> None:
        self.trace.append(f"t={self.now} {line}")
        if self.verbose:
            print(self.trace[-1])

    def commit(self, records: Sequence[MetadataRecord], what: str) -> bool:
        """Propose as one entry; one in ten proposals is lost (leader change, timeout)."""
        if not records:
            return True
        if self.rng.random() < 0.1:
            self.log(f"{what}: LOST {records}")
            return False
        self.log(f"{what}: {records}")
        before = dict(self._keyed())
        self.image.apply(records, self.image.offset + self.rng.choice((1, 1, 2)))
        self.check(before)
        return True

    def _keyed(self) -> list[tuple[tuple[str, int], PartitionInfo]]:
        ids = {t.name: t.topic_id for t in self.image.topics.values()}
        return [((ids[p.topic], p.partition), p) for p in self.image.partitions.values()]

    def check(self, before: dict[tuple[str, int], PartitionInfo]) -> None:
        brokers = self.image.brokers
        for key, p in self._keyed():
            assert p.isr and len(set(p.isr)) == len(p.isr) and set(p.isr) <= set(p.replicas), p
            if p.leader == -1:
                assert all(brokers[r].fenced for r in p.isr), f"{p} leaderless with a live ISR"
            else:
                assert p.leader in p.isr and not brokers[p.leader].fenced, p
            old = before.get(key)
            if old is None:
                continue
            assert p.leader_epoch >= old.leader_epoch and p.partition_epoch >= old.partition_epoch
            if p.leader != old.leader:
                assert p.leader_epoch > old.leader_epoch, (old, p)
                assert p.leader == -1 or p.leader in old.isr, f"unclean election {old} -> {p}"

    def step(self) -> None:
        op = self.rng.choices(
            ["register", "heartbeat", "advance", "expire", "topic", "shutdown", "crash",
             "elect", "alter", "failover", "remove"],
            weights=[6, 30, 10, 8, 4, 1, 1, 3, 6, 1, 1],
        )[0]  # fmt: skip
        b = self.rng.randint(1, 5)
        node = self.nodes[b]
        getattr(self, f"op_{op}")(b, node)

    def op_register(self, b: int, node: Node) -> None:
        if self.rng.random() < 0.3 or node.epoch < 0 or not node.running:
            node.incarnation += 1
        reg = self.controller.register(b, f"{b}.{node.incarnation}", "h", 9092, self.now)
        self.sessions[b] = self.now
        current = self.image.brokers.get(b)
        if current is not None and current.incarnation_id == f"{b}.{node.incarnation}":
            assert reg == Registration(current.broker_epoch, ())
        if self.commit(reg.records, f"register {b}"):
            node.epoch, node.running, node.shutting_down = reg.broker_epoch, True, False

    def op_heartbeat(self, b: int, node: Node) -> None:
        if not node.running:
            return
        epoch = node.epoch if self.rng.random() > 0.05 else node.epoch - 1
        offset = self.image.offset - self.rng.choice((0, 0, 0, 1, 5))
        out = self.controller.heartbeat(b, epoch, offset, self.now, node.shutting_down)
        current = self.image.brokers.get(b)
        if current is None or current.broker_epoch != epoch:
            assert out.error is ErrorCode.stale_broker_epoch and not out.records
            return
        self.sessions[b] = self.now
        assert out.error is ErrorCode.none and out.is_caught_up == (
            offset >= current.registered_offset
        )
        if out.should_shut_down:
            assert node.shutting_down and not self.image.partitions_led_by(b)
        if self.commit(out.records, f"heartbeat {b}"):
            assert self.image.brokers[b].fenced == out.is_fenced
            node.running = not out.should_shut_down

    def op_advance(self, b: int, node: Node) -> None:
        self.now += self.rng.choice((0, 100, 700, 1500, TIMEOUT + 1))

    def op_expire(self, b: int, node: Node) -> None:
        deadline = self.controller.next_deadline_ms()
        entries = self.controller.expire(self.now)
        assert not entries or (deadline is not None and deadline <= self.now)
        for entry in entries:
            fenced = entry[0]
            assert isinstance(fenced, FenceBroker)
            assert self.now - self.sessions[fenced.broker_id] > TIMEOUT
            if not self.commit(entry, "expire"):
                return
        for info in self.image.brokers.values():
            if not info.fenced:
                assert self.now - self.sessions[info.broker_id] <= TIMEOUT, info

    def op_topic(self, b: int, node: Node) -> None:
        name = self.rng.choice(NAMES)
        partitions, rf = self.rng.randint(0, 4), self.rng.randint(0, 4)
        self.topic_ids += 1
        live = self.image.live_brokers()
        expected = (
            ErrorCode.topic_already_exists
            if name in self.image.topics
            else ErrorCode.invalid_partitions
            if partitions < 1
            else ErrorCode.invalid_replication_factor
            if not 1 <= rf <= len(live)
            else ErrorCode.none
        )
        try:
            records = self.controller.create_topic(name, partitions, rf, {}, f"{self.topic_ids}")
        except ControllerError as exc:
            assert exc.error_code is expected
            return
        assert expected is ErrorCode.none and len(records) == partitions + 1
        for r in records[1:]:
            assert isinstance(r, CreatePartition) and len(set(r.replicas)) == rf
            assert (
                set(r.replicas) <= set(live) and r.isr == r.replicas and r.leader == r.replicas[0]
            )
        self.commit(records, f"create {name}")

    def op_shutdown(self, b: int, node: Node) -> None:
        node.shutting_down = True

    def op_crash(self, b: int, node: Node) -> None:
        node.running = False

    def op_elect(self, b: int, node: Node) -> None:
        if self.commit(self.controller.elect_preferred_leaders(), "elect"):
            for p in self.image.partitions.values():
                first = p.replicas[0]
                assert p.leader == first or first not in p.isr or self.image.brokers[first].fenced

    def op_alter(self, b: int, node: Node) -> None:
        """A leader's AlterPartition: replica b joins the ISR, or leaves it."""
        on = [
            p
            for _, p in sorted(self._keyed(), key=lambda kp: kp[0])
            if b in p.replicas and p.leader not in (-1, b)
        ]
        if not on:
            return
        p = self.rng.choice(on)
        isr = tuple(r for r in p.isr if r != b) if b in p.isr else (*p.isr, b)
        # now and then a proposal based on a partition epoch that has moved on since
        stale = p.partition_epoch > 0 and self.rng.random() < 0.1
        leader = self.image.brokers[p.leader]
        try:
            records = self.controller.alter_partition(
                p.leader, leader.broker_epoch, p.topic, p.partition, p.leader_epoch, isr,
                p.partition_epoch - 1 if stale else p.partition_epoch,
            )  # fmt: skip
        except ControllerError as exc:
            if stale:
                assert exc.error_code is ErrorCode.invalid_update_version
            else:
                assert exc.error_code is ErrorCode.ineligible_replica, exc.message
                assert b not in p.isr and self.image.brokers[b].fenced
            return
        assert not stale and (b in p.isr or not self.image.brokers[b].fenced)
        assert records == (
            ChangePartition(
                p.topic, p.partition, isr, p.leader, p.leader_epoch, p.partition_epoch + 1
            ),
        )
        self.commit(records, "alter partition")

    def op_failover(self, b: int, node: Node) -> None:
        """Another controller takes over, or this one leads again after losing the quorum."""
        if self.rng.random() < 0.5:
            self.controller = Controller(self.image, self.config)
        self.controller.activate(self.now)
        self.sessions = dict.fromkeys(self.image.brokers, self.now)
        self.log("failover")
        assert self.controller.expire(self.now) == []

    def op_remove(self, b: int, node: Node) -> None:
        if self.image.topics:
            self.commit([RemoveTopic(self.rng.choice(sorted(self.image.topics)))], "delete")


def run_seed(seed: int, *, verbose: bool = False) -> Run:
    run = Run(seed, verbose=verbose)
    with reproducible(
        "KOPS_CONTROLLER_SEED",
        seed,
        "tests/cluster/test_controller.py -k random_operation",
        lambda: run.trace,
        lines=25,
    ):
        for _ in range(STEPS):
            run.step()
    return run


@pytest.mark.parametrize(
    "seeds",
    chunked("KOPS_CONTROLLER_SEED", SEEDS, CHUNK),
    ids=lambda s: str(s[0]),
)
def test_random_operation_sequences_keep_the_partition_invariants(seeds: list[int]) -> None:
    verbose = len(seeds) == 1
    for seed in seeds:
        run_seed(seed, verbose=verbose)
