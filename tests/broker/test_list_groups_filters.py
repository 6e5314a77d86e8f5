"""ListGroups v4 states_filter and v5 types_filter / group_type (KIP-518, KIP-848).

Through librdkafka's list_consumer_groups(states=..., types=...) and raw requests.
The broker may hold other tests' groups, so each check looks at this test's two
groups only: one Empty (offsets committed by an assign()-style consumer) and
one Stable (a subscribed member).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, ConsumerGroupState, ConsumerGroupType, TopicPartition
from confluent_kafka.admin import AdminClient
from kio.schema.errors import ErrorCode
from kio.schema.list_groups import v3, v4, v5

from kops.protocol.client import send_request
from tests.broker.clients import create_topic, produce
from tests.broker.groups.group_helpers import GroupMember, wait_until


@pytest.fixture(scope="module")
def groups(kafka_broker: str) -> Iterator[tuple[str, str]]:
    """(empty group, stable group)."""
    topic = f"lg-{uuid.uuid4().hex[:8]}"
    empty, stable = f"lg-empty-{uuid.uuid4().hex[:8]}", f"lg-stable-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_broker, topic)
    produce(kafka_broker, topic, [(None, b"x")])
    admin = AdminClient({"bootstrap.servers": kafka_broker})
    # A simple commit (generation -1) makes an Empty group that only holds offsets.
    committer = Consumer({"bootstrap.servers": kafka_broker, "group.id": empty})
    committer.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    committer.close()
    member = GroupMember(kafka_broker, stable, [topic])
    try:
        wait_until(lambda: member.partitions() == {0}, what="the member's assignment")
        wait_until(lambda: _states(admin).get(stable) == "Stable", what="the group to be Stable")
        yield empty, stable
    finally:
        member.close()


def _states(admin: AdminClient) -> dict[str, str]:
    listed = admin.list_consumer_groups().result(10)
    return {g.group_id: g.state.name.title().replace("_", "") for g in listed.valid}


def _admin_ids(admin: AdminClient, **filters: object) -> set[str]:
    listed = admin.list_consumer_groups(**filters).result(10)
    assert not listed.errors, listed.errors
    return {g.group_id for g in listed.valid}


def _raw(bootstrap: str, request: object) -> object:
    host, _, port = bootstrap.rpartition(":")
    return send_request(host, int(port), request, timeout=10)  # type: ignore[arg-type]


def test_admin_client_states_and_types_filters(kafka_broker: str, groups: tuple[str, str]) -> None:
    empty, stable = groups
    mine = {empty, stable}
    admin = AdminClient({"bootstrap.servers": kafka_broker})
    assert mine <= _admin_ids(admin)
    assert _admin_ids(admin, states={ConsumerGroupState.STABLE}) & mine == {stable}
    assert _admin_ids(admin, states={ConsumerGroupState.EMPTY}) & mine == {empty}
    both = {ConsumerGroupState.EMPTY, ConsumerGroupState.STABLE}
    assert _admin_ids(admin, states=both) & mine == mine
    assert _admin_ids(admin, states={ConsumerGroupState.DEAD}) & mine == set()
    # kops runs classic groups only.
    assert _admin_ids(admin, types={ConsumerGroupType.CLASSIC}) & mine == mine
    assert _admin_ids(admin, types={ConsumerGroupType.CONSUMER}) & mine == set()
    assert _admin_ids(
        admin, states={ConsumerGroupState.STABLE}, types={ConsumerGroupType.CLASSIC}
    ) & mine == {stable}
    listed = admin.list_consumer_groups(types={ConsumerGroupType.CLASSIC}).result(10).valid
    for listing in listed:
        if listing.group_id in mine:
            assert listing.type == ConsumerGroupType.CLASSIC


def test_v4_states_filter_is_case_insensitive(kafka_broker: str, groups: tuple[str, str]) -> None:
    empty, stable = groups

    def listed(*states: str) -> dict[str, str]:
        response = _raw(kafka_broker, v4.ListGroupsRequest(states_filter=states))
        assert response.error_code == ErrorCode.none  # type: ignore[attr-defined]
        return {
            g.group_id: g.group_state
            for g in response.groups  # type: ignore[attr-defined]
            if g.group_id in (empty, stable)
        }

    assert listed() == {empty: "Empty", stable: "Stable"}
    assert listed("stable") == {stable: "Stable"}
    assert listed("STABLE", "eMpTy") == {empty: "Empty", stable: "Stable"}
    assert listed(" Empty ") == {empty: "Empty"}  # Kafka trims state names too
    assert listed("PreparingRebalance") == {}
    assert listed("no-such-state") == {}


def test_v5_types_filter_and_group_type(kafka_broker: str, groups: tuple[str, str]) -> None:
    empty, stable = groups

    def listed(types: tuple[str, ...], states: tuple[str, ...] = ()) -> dict[str, str]:
        response = _raw(
            kafka_broker, v5.ListGroupsRequest(states_filter=states, types_filter=types)
        )
        assert response.error_code == ErrorCode.none  # type: ignore[attr-defined]
        return {
            g.group_id: g.group_type
            for g in response.groups  # type: ignore[attr-defined]
            if g.group_id in (empty, stable)
        }

    assert listed(()) == {empty: "classic", stable: "classic"}
    assert listed(("classic",)) == {empty: "classic", stable: "classic"}
    assert listed(("CLASSIC",)) == {empty: "classic", stable: "classic"}
    assert listed(("Consumer",)) == {}
    assert listed(("share",)) == {}
    assert listed(("bogus",)) == {}
    assert listed(("share", "Classic")) == {empty: "classic", stable: "classic"}
    assert listed(("classic",), ("stable",)) == {stable: "classic"}
    assert listed(("consumer",), ("stable",)) == {}


def test_older_versions_ignore_filters(kafka_broker: str, groups: tuple[str, str]) -> None:
    response = _raw(kafka_broker, v3.ListGroupsRequest())
    ids = {g.group_id for g in response.groups}  # type: ignore[attr-defined]
    assert set(groups) <= ids
