"""Consumer groups with real confluent-kafka consumers: splitting partitions,
rebalancing on join, leave and death, cooperative and static membership,
queue and publish-subscribe delivery."""

from __future__ import annotations

import time

from tests.broker.clients import create_topic, produce
from tests.broker.groups.group_helpers import (
    ChildConsumer,
    GroupMember,
    close_all,
    new_group,
    wait_until,
)

PARTITIONS = 6


def _records(n: int, start: int = 0) -> list[tuple]:
    return [
        (f"k{i}".encode(), f"v{i}".encode(), None, i % PARTITIONS) for i in range(start, start + n)
    ]


def _split(members: list[GroupMember], partitions: int = PARTITIONS) -> bool:
    """Every member owns at least one partition and together they own each exactly once."""
    owned = [m.partitions() for m in members]
    if not all(owned):
        return False
    flat = [p for parts in owned for p in parts]
    return sorted(flat) == list(range(partitions))


def test_members_split_rebalance_on_join_and_leave(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name, PARTITIONS)
    group = new_group()
    a = GroupMember(kafka_broker, group, [topic_name])
    b = GroupMember(kafka_broker, group, [topic_name])
    members = [a, b]
    try:
        wait_until(lambda: _split([a, b]), what="two members to split the topic")
        assert sorted(len(m.partitions()) for m in (a, b)) == [3, 3]

        c = GroupMember(kafka_broker, group, [topic_name])
        members.append(c)
        wait_until(lambda: _split([a, b, c]), what="a third member to get partitions")
        assert sorted(len(m.partitions()) for m in (a, b, c)) == [2, 2, 2]

        c.close()
        members.remove(c)
        wait_until(lambda: _split([a, b]), what="the others to take the leaver's partitions")
    finally:
        for m in members:
            m.close()


def test_killed_member_is_evicted_after_session_timeout(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name, PARTITIONS)
    group = new_group()
    a = GroupMember(kafka_broker, group, [topic_name])
    b = GroupMember(kafka_broker, group, [topic_name])
    child = ChildConsumer(kafka_broker, group, topic_name, session_ms=2000)
    try:
        wait_until(
            lambda: (
                child.assignments
                and child.assignments[-1]
                and len(a.partitions()) + len(b.partitions()) + len(child.assignments[-1])
                == PARTITIONS
            ),
            what="a three-way split with the child consumer",
        )
        killed_at = time.monotonic()
        child.kill()  # SIGKILL: no LeaveGroup, the coordinator must notice the silence
        wait_until(lambda: _split([a, b]), timeout=15, what="the survivors to take over")
        # Evicted by the 2 s session timeout, not by the 300 s rebalance timeout.
        assert time.monotonic() - killed_at < 8
    finally:
        child.kill()
        a.close()
        b.close()


def test_no_record_consumed_twice_with_synchronous_commits(
    kafka_broker: str, topic_name: str
) -> None:
    create_topic(kafka_broker, topic_name, PARTITIONS)
    group = new_group()
    produce(kafka_broker, topic_name, _records(300))
    a = GroupMember(kafka_broker, group, [topic_name], sync_commit=True)
    b = GroupMember(kafka_broker, group, [topic_name], sync_commit=True)
    members = [a, b]
    try:
        wait_until(lambda: len(a.messages) + len(b.messages) > 100, what="consumption to start")
        c = GroupMember(kafka_broker, group, [topic_name], sync_commit=True)
        members.append(c)
        produce(kafka_broker, topic_name, _records(300, 300))
        wait_until(lambda: c.partitions(), what="the third member's assignment")
        a.close()
        produce(kafka_broker, topic_name, _records(300, 600))
        wait_until(
            lambda: sum(len(m.messages) for m in members) >= 900, timeout=30, what="all 900 records"
        )
        time.sleep(0.5)  # let any duplicate show up
    finally:
        for m in members[1:]:
            m.close()
    seen = [(p, o) for m in members for p, o, _ in m.messages]
    assert len(seen) == len(set(seen)) == 900
    assert not [e for m in members for e in m.commit_errors]


def test_cooperative_sticky_rebalances_incrementally(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name, PARTITIONS)
    group = new_group()
    sticky = {"partition.assignment.strategy": "cooperative-sticky"}
    a = GroupMember(kafka_broker, group, [topic_name], **sticky)
    b = GroupMember(kafka_broker, group, [topic_name], **sticky)
    members = [a, b]
    try:
        wait_until(lambda: _split([a, b]) and len(a.partitions()) == 3, what="a 3/3 split")
        before = {id(m): m.partitions() for m in (a, b)}
        revoked_before = {id(m): len(m.revoked) for m in (a, b)}
        c = GroupMember(kafka_broker, group, [topic_name], **sticky)
        members.append(c)
        wait_until(
            lambda: _split([a, b, c]) and len(c.partitions()) == 2,
            what="the newcomer to get two partitions",
        )
        for survivor in (a, b):
            now = survivor.partitions()
            # Survivors keep what they had, minus what moved to the newcomer...
            assert now <= before[id(survivor)]
            assert len(now) == 2
            # ...and were only ever asked to give up the partition that moved.
            revocations = survivor.revoked[revoked_before[id(survivor)] :]
            assert [p for r in revocations for p in r] == sorted(before[id(survivor)] - now)
    finally:
        for m in members:
            m.close()


def test_static_member_restart_keeps_partitions_without_rebalance(
    kafka_broker: str, topic_name: str
) -> None:
    create_topic(kafka_broker, topic_name, PARTITIONS)
    group = new_group()
    a = GroupMember(kafka_broker, group, [topic_name], **{"group.instance.id": "a"})
    b = GroupMember(kafka_broker, group, [topic_name], **{"group.instance.id": "b"})
    a2 = None
    try:
        wait_until(lambda: _split([a, b]), what="two static members to split the topic")
        time.sleep(1)  # settle: no further rebalances pending
        owned = a.partitions()
        b_calls = (len(b.assigned), len(b.revoked))
        a.close()  # a static member sends no LeaveGroup: its place is kept for the session timeout
        a2 = GroupMember(kafka_broker, group, [topic_name], **{"group.instance.id": "a"})
        wait_until(lambda: a2.partitions(), what="the restarted static member's assignment")
        assert a2.partitions() == owned
        time.sleep(1.5)  # three heartbeat intervals: b would have been told to rejoin by now
        assert (len(b.assigned), len(b.revoked)) == b_calls
        assert _split([a2, b])
    finally:
        if a2 is not None:
            a2.close()
        b.close()


def test_queue_within_a_group_and_pubsub_across_groups(kafka_broker: str, topic_name: str) -> None:
    create_topic(kafka_broker, topic_name, PARTITIONS)
    queue_group, solo_group = new_group(), new_group()
    queue = [GroupMember(kafka_broker, queue_group, [topic_name]) for _ in range(3)]
    solo = GroupMember(kafka_broker, solo_group, [topic_name])
    try:
        # Produce once the groups are settled, so no rebalance replays uncommitted records.
        wait_until(
            lambda: _split(queue) and len(solo.partitions()) == PARTITIONS, what="both groups"
        )
        produce(kafka_broker, topic_name, _records(240))
        wait_until(
            lambda: sum(len(m.messages) for m in queue) >= 240 and len(solo.messages) >= 240,
            what="both groups to read everything",
        )
        time.sleep(0.3)
    finally:
        close_all([*queue, solo])
    queued = [v for m in queue for _, _, v in m.messages]
    assert len(queued) == len(set(queued)) == 240
    assert sorted(v for _, _, v in solo.messages) == sorted(queued)
    assert all(m.messages for m in queue)
