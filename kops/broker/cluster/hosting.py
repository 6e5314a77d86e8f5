"""Which partitions a cluster member hosts, decided from the metadata image alone.

Every applied image goes through ``plan_hosting``: the replicas assigned to this
broker that it has not opened, the open ones whose state the image may have
changed (leader, leader epoch, ISR), the ones to remove because their topic is
gone or was re-created under the same name (a new topic id), and the topics
whose configs changed. Sans-io: the broker performs the plan.

``ImageTopics`` is the topic registry's read side over the image, so the
broker's readers (Metadata, configs, the group coordinator) ask one way on a
single broker and in a cluster.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from kops.broker.cluster.metadata import MetadataImage, PartitionInfo
from kops.broker.cluster.partition import TopicPartition
from kops.broker.cluster.topics import TopicRecord
from kops.broker.groups.storage import OFFSETS_TOPIC

__all__ = ["INTERNAL_TOPICS", "HostingPlan", "ImageTopics", "plan_hosting"]

INTERNAL_TOPICS = frozenset({OFFSETS_TOPIC, "__transaction_state"})


@dataclass(slots=True)
class HostingPlan:
    open: list[PartitionInfo] = field(default_factory=list)
    update: list[PartitionInfo] = field(default_factory=list)
    remove: list[TopicPartition] = field(default_factory=list)
    reconfigure: list[str] = field(default_factory=list)


def plan_hosting(
    image: MetadataImage,
    node_id: int,
    hosted: Mapping[TopicPartition, str],
    configs_seen: Mapping[str, tuple[tuple[str, str], ...]],
) -> HostingPlan:
    """`hosted` maps each open partition to its topic id; `configs_seen` the configs last applied."""
    plan = HostingPlan()
    for key, topic_id in sorted(hosted.items()):
        topic = image.topics.get(key[0])
        p = image.partitions.get(key)
        if topic is None or topic.topic_id != topic_id or p is None or node_id not in p.replicas:
            plan.remove.append(key)
    removed = set(plan.remove)
    for key in sorted(image.partitions):
        p = image.partitions[key]
        if node_id not in p.replicas:
            continue
        if key in hosted and key not in removed:
            plan.update.append(p)
        else:
            plan.open.append(p)
    for name, seen in sorted(configs_seen.items()):
        topic = image.topics.get(name)
        if topic is not None and topic.configs != seen:
            plan.reconfigure.append(name)
    return plan


class ImageTopics:
    """TopicRecords built from an image on demand, and kept until the next image."""

    def __init__(self) -> None:
        self._image = MetadataImage()
        self._records: dict[str, TopicRecord] = {}

    def update(self, image: MetadataImage) -> None:
        self._image = image
        self._records.clear()

    def __contains__(self, name: object) -> bool:
        return name in self._image.topics

    def __iter__(self) -> Iterator[TopicRecord]:
        for name in sorted(self._image.topics):
            record = self.get(name)
            if record is not None:
                yield record

    def get(self, name: str) -> TopicRecord | None:
        record = self._records.get(name)
        if record is not None:
            return record
        topic = self._image.topics.get(name)
        if topic is None:
            return None
        record = TopicRecord(
            name=name,
            topic_id=uuid.UUID(topic.topic_id),
            replicas=[list(p.replicas) for p in self._image.partitions_of(name)],
            configs=dict(topic.configs),
            internal=name in INTERNAL_TOPICS,
        )
        self._records[name] = record
        return record

    def by_id(self, topic_id: uuid.UUID) -> TopicRecord | None:
        wanted = str(topic_id)
        for topic in self._image.topics.values():
            if topic.topic_id == wanted:
                return self.get(topic.name)
        return None
