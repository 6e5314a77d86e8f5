"""Broker and topic settings, named and defaulted as Kafka names them."""

from __future__ import annotations

import builtins
from collections.abc import Mapping

from kio.schema.errors import ErrorCode

from kops.errors import ApiError

BROKER_DEFAULTS: dict[str, str] = {
    "node.id": "0",
    "auto.create.topics.enable": "true",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "log.retention.hours": "168",
    "log.retention.bytes": "-1",
    "log.segment.bytes": str(1 << 30),
    "log.roll.hours": "168",
    "log.index.interval.bytes": "4096",
    "log.retention.check.interval.ms": "300000",
    "log.cleanup.policy": "delete",
    "log.message.timestamp.type": "CreateTime",
    "message.max.bytes": "1048588",
    "socket.request.max.bytes": str(100 * 1024 * 1024),
    "offsets.topic.num.partitions": "50",
    "offsets.retention.minutes": "10080",
    "offsets.retention.check.interval.ms": "600000",
    "offset.metadata.max.bytes": "4096",
    "group.initial.rebalance.delay.ms": "3000",
    "group.min.session.timeout.ms": "6000",
    "group.max.session.timeout.ms": "1800000",
    "delete.retention.ms": "86400000",
    "log.cleaner.backoff.ms": "15000",
    "log.cleaner.min.cleanable.ratio": "0.5",
}

# Topic-level settings and the broker setting each one defaults from.
TOPIC_DEFAULT_SOURCES: dict[str, str] = {
    "cleanup.policy": "log.cleanup.policy",
    "retention.ms": "log.retention.ms",
    "retention.bytes": "log.retention.bytes",
    "segment.bytes": "log.segment.bytes",
    "segment.ms": "log.roll.ms",
    "index.interval.bytes": "log.index.interval.bytes",
    "message.timestamp.type": "log.message.timestamp.type",
    "max.message.bytes": "message.max.bytes",
    "min.insync.replicas": "min.insync.replicas",
    "delete.retention.ms": "delete.retention.ms",
    "min.cleanable.dirty.ratio": "log.cleaner.min.cleanable.ratio",
}


class ConfigError(ApiError, ValueError):
    """A setting name or value that the broker does not accept."""

    error_code = ErrorCode.invalid_config


class BrokerConfig:
    def __init__(self, overrides: Mapping[str, str] | None = None) -> None:
        self._values = dict(BROKER_DEFAULTS)
        for key, value in (overrides or {}).items():
            self._values[key] = str(value)
        # Kafka derives the ms settings from hours unless the ms form is given.
        if "log.retention.ms" not in self._values:
            self._values["log.retention.ms"] = str(
                int(self._values["log.retention.hours"]) * 3600_000
            )
        if "log.roll.ms" not in self._values:
            self._values["log.roll.ms"] = str(int(self._values["log.roll.hours"]) * 3600_000)

    def get(self, key: str) -> str | None:
        return self._values.get(key)

    def int(self, key: str) -> int:
        return int(self._values[key])

    def bool(self, key: str) -> bool:
        return self._values[key].strip().lower() == "true"

    @property
    def node_id(self) -> builtins.int:
        return int(self._values.get("broker.id", self._values["node.id"]))

    def topic_defaults(self) -> dict[str, str]:
        return {topic: self._values[broker] for topic, broker in TOPIC_DEFAULT_SOURCES.items()}

    def items(self) -> dict[str, str]:
        return dict(self._values)


def validate_topic_config(config: Mapping[str, str]) -> None:
    """Reject unknown names and non-numeric values where numbers are expected."""
    for key, value in config.items():
        if key not in TOPIC_DEFAULT_SOURCES:
            raise ConfigError(f"unknown topic config {key!r}")
        if key == "cleanup.policy":
            parts = {p.strip() for p in value.split(",")}
            if not parts or not parts <= {"delete", "compact"}:
                raise ConfigError(f"invalid value {value!r} for cleanup.policy")
        elif key == "min.cleanable.dirty.ratio":
            try:
                ratio = float(value)
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                raise ConfigError(
                    f"invalid value {value!r} for {key}: expected a number from 0 to 1"
                )
        elif key == "message.timestamp.type":
            if value not in ("CreateTime", "LogAppendTime"):
                raise ConfigError(f"invalid value {value!r} for message.timestamp.type")
        else:
            try:
                int(value)
            except ValueError:
                raise ConfigError(f"invalid value {value!r} for {key}") from None
