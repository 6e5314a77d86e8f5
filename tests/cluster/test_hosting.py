"""What a cluster member hosts, decided from the metadata image alone (sans-io)."""

from __future__ import annotations

import uuid

from kops.broker.cluster.hosting import ImageTopics, plan_hosting
from kops.broker.cluster.metadata import (
    ChangePartition,
    ChangeTopicConfigs,
    CreatePartition,
    CreateTopic,
    MetadataImage,
    RegisterBroker,
    RemoveTopic,
    UnfenceBroker,
)

A = str(uuid.UUID(int=1))
B = str(uuid.UUID(int=2))


def _image() -> MetadataImage:
    image = MetadataImage()
    image.apply([RegisterBroker(b, f"i{b}", b, "h", 9000 + b) for b in (1, 2, 3)], 0)
    image.apply([UnfenceBroker(b, b) for b in (1, 2, 3)], 1)
    image.apply(
        [
            CreateTopic("a", A, (("retention.ms", "1"),)),
            CreatePartition("a", 0, (1, 2), (1, 2), 1),
            CreatePartition("a", 1, (2, 3), (2, 3), 2),
            CreatePartition("a", 2, (3, 1), (3, 1), 3),
        ],
        2,
    )
    return image


def test_a_broker_opens_the_replicas_assigned_to_it_and_updates_the_open_ones() -> None:
    image = _image()
    plan = plan_hosting(image, 1, {}, {})
    assert [(p.topic, p.partition) for p in plan.open] == [("a", 0), ("a", 2)]
    assert plan.update == [] and plan.remove == [] and plan.reconfigure == []

    hosted = {("a", 0): A, ("a", 2): A}
    image.apply([ChangePartition("a", 0, (1,), 1, 0, 1)], 3)
    plan = plan_hosting(image, 1, hosted, {"a": (("retention.ms", "1"),)})
    assert plan.open == []
    assert [(p.topic, p.partition, p.isr) for p in plan.update] == [
        ("a", 0, (1,)),
        ("a", 2, (3, 1)),
    ]
    assert plan.reconfigure == []

    image.apply([ChangeTopicConfigs("a", (("retention.ms", "2"),))], 4)
    plan = plan_hosting(image, 1, hosted, {"a": (("retention.ms", "1"),)})
    assert plan.reconfigure == ["a"]


def test_replicas_of_a_deleted_or_recreated_topic_are_removed() -> None:
    image = _image()
    hosted = {("a", 0): A, ("a", 2): A, ("gone", 0): A}
    image.apply([RemoveTopic("a")], 3)
    image.apply([CreateTopic("a", B, ()), CreatePartition("a", 0, (1,), (1,), 1)], 4)
    plan = plan_hosting(image, 1, hosted, {})
    # Same name, new id: the old replica goes and the new one opens in its place.
    assert plan.remove == [("a", 0), ("a", 2), ("gone", 0)]
    assert [(p.topic, p.partition) for p in plan.open] == [("a", 0)]


def test_image_topics_read_like_the_registry() -> None:
    topics = ImageTopics()
    assert "a" not in topics and topics.get("a") is None
    topics.update(_image())
    record = topics.get("a")
    assert record is not None
    assert record.topic_id == uuid.UUID(A)
    assert record.replicas == [[1, 2], [2, 3], [3, 1]]
    assert record.configs == {"retention.ms": "1"}
    assert not record.internal
    assert [r.name for r in topics] == ["a"]
    assert topics.by_id(uuid.UUID(A)) is record
    assert topics.by_id(uuid.UUID(B)) is None
