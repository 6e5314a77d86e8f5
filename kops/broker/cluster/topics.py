"""The topic registry: names, ids, partition counts, replica assignment, configs.

Persisted as one JSON document, replaced atomically, so a crash leaves either
the old or the new registry and never a torn one.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kio.schema.errors import ErrorCode

from kops.errors import ApiError

_LEGAL_TOPIC = re.compile(r"^[a-zA-Z0-9._-]+$")
MAX_TOPIC_NAME = 249


class TopicError(ApiError):
    """A topic operation refused with a Kafka error code (CreateTopics, configs...)."""

    def __init__(self, error_code: ErrorCode, message: str) -> None:
        super().__init__(message, error_code=error_code)


def topic_name_error(name: str) -> str | None:
    """Why `name` is not a legal Kafka topic name, or None when it is."""
    if not name:
        return "topic name is empty"
    if name in (".", ".."):
        return "topic name cannot be '.' or '..'"
    if len(name) > MAX_TOPIC_NAME:
        return f"topic name is longer than {MAX_TOPIC_NAME} characters"
    if not _LEGAL_TOPIC.match(name):
        return (
            f"topic name {name!r} has characters other than ASCII alphanumerics, '.', '_' and '-'"
        )
    return None


@dataclass
class TopicRecord:
    name: str
    topic_id: uuid.UUID
    replicas: list[list[int]]  # per partition, leader first
    configs: dict[str, str] = field(default_factory=dict)
    internal: bool = False

    @property
    def partitions(self) -> int:
        return len(self.replicas)


class TopicRegistry:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._topics: dict[str, TopicRecord] = {}
        if path.exists():
            document = json.loads(path.read_text())
            for entry in document["topics"]:
                record = TopicRecord(
                    name=entry["name"],
                    topic_id=uuid.UUID(entry["id"]),
                    replicas=[list(r) for r in entry["replicas"]],
                    configs=dict(entry.get("configs", {})),
                    internal=bool(entry.get("internal", False)),
                )
                self._topics[record.name] = record

    def __contains__(self, name: object) -> bool:
        return name in self._topics

    def __iter__(self) -> Iterator[TopicRecord]:
        return iter(list(self._topics.values()))

    def get(self, name: str) -> TopicRecord | None:
        return self._topics.get(name)

    def by_id(self, topic_id: uuid.UUID) -> TopicRecord | None:
        for record in self._topics.values():
            if record.topic_id == topic_id:
                return record
        return None

    def add(self, record: TopicRecord) -> None:
        self._topics[record.name] = record
        self.save()

    def remove(self, name: str) -> TopicRecord | None:
        record = self._topics.pop(name, None)
        self.save()
        return record

    def save(self) -> None:
        document = {
            "version": 1,
            "topics": [
                {
                    "name": r.name,
                    "id": str(r.topic_id),
                    "replicas": r.replicas,
                    "configs": r.configs,
                    "internal": r.internal,
                }
                for r in self._topics.values()
            ],
        }
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump(document, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self._path)
