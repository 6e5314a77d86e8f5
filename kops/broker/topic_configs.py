"""Every topic-level config Kafka 3.7-4.0 defines, with Kafka's types, defaults,
validation, the broker settings each one defaults from, and whether kops acts on it.

Kafka refuses a topic config it does not know and refuses bad values, with
INVALID_CONFIG and a ConfigException message ("Invalid value X for
configuration Y: ..."); kops does the same for the same names and values, so a
client or tool that works against Kafka works here. Configs kops stores but
does not act on (flush intervals, tiered storage, replication throttles, ...)
are still validated, stored and described, and their documentation says so.

Synonyms are listed highest priority first, as Kafka's ServerTopicConfigSynonyms
lists them; the first one is always present in kops.broker.config.BrokerConfig
(defaulted or derived, e.g. log.retention.ms from log.retention.hours).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from kops.errors import ApiError

__all__ = [
    "CATALOGUE",
    "COMPRESSION_TYPES",
    "NOT_ACTED_NOTE",
    "ConfigError",
    "ConfigType",
    "TopicConfigDef",
    "parse_value",
    "validate_topic_config",
]

LONG_MAX = (1 << 63) - 1
_INT_RANGE = (-(1 << 31), (1 << 31) - 1)
_LONG_RANGE = (-(1 << 63), LONG_MAX)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
# What Kafka's MetadataVersionValidator accepts, loosely: "2.8", "3.0-IV1", "0.10.2.0".
_FORMAT_VERSION = re.compile(r"[0-9]+(\.[0-9]+){1,3}(-IV[0-9]+)?")
_REPLICA_PAIR = re.compile(r"[0-9]+:[0-9]+")

COMPRESSION_TYPES = ("uncompressed", "zstd", "lz4", "snappy", "gzip", "producer")
NOT_ACTED_NOTE = "Stored; kops does not act on this setting."


class ConfigError(ApiError, ValueError):
    """A setting name or value that the broker does not accept."""

    error_code = ErrorCode.invalid_config


class ConfigType(enum.IntEnum):
    """DescribeConfigs' config_type (v3+), numbered as Kafka numbers it."""

    BOOLEAN = 1
    STRING = 2
    INT = 3
    SHORT = 4
    LONG = 5
    DOUBLE = 6
    LIST = 7
    CLASS = 8
    PASSWORD = 9


Parsed = int | float | bool | str | list[str]
# A check returns what is wrong with a parsed value (Kafka's wording), or None.
Check = Callable[[Parsed], str | None]


@dataclass(frozen=True, slots=True)
class TopicConfigDef:
    name: str
    type: ConfigType
    # Kafka's default, used when no broker setting supplies one.
    default: str
    doc: str
    acted: bool
    synonyms: tuple[str, ...] = ()
    check: Check | None = None

    @property
    def documentation(self) -> str:
        return self.doc if self.acted else f"{self.doc} {NOT_ACTED_NOTE}"


def _at_least(low: int) -> Check:
    def check(value: Parsed) -> str | None:
        return None if _num(value) >= low else f"Value must be at least {low}"

    return check


def _between(low: int, high: int) -> Check:
    def check(value: Parsed) -> str | None:
        n = _num(value)
        if not n >= low:  # written so that NaN fails too
            return f"Value must be at least {low}"
        if not n <= high:
            return f"Value must be no more than {high}"
        return None

    return check


def _num(value: Parsed) -> float:
    assert isinstance(value, int | float)
    return value


def _one_of(*allowed: str) -> Check:
    def check(value: Parsed) -> str | None:
        return None if value in allowed else f"String must be one of: {', '.join(allowed)}"

    return check


def _cleanup_policy(value: Parsed) -> str | None:
    assert isinstance(value, list)
    unknown = [v for v in value if v not in ("compact", "delete")]
    if unknown:
        return f"[{', '.join(unknown)}] are not in the list of valid values [compact, delete]"
    # Kafka 3.x takes an empty list (no cleanup at all); kops's log needs a policy.
    if not value:
        return "kops needs at least one of compact, delete"
    return None


def _gzip_level(value: Parsed) -> str | None:
    n = _num(value)
    return None if n == -1 or 1 <= n <= 9 else "Value must be between 1 and 9, or -1 (the default)"


def _throttled_replicas(value: Parsed) -> str | None:
    assert isinstance(value, list)
    if value == ["*"] or all(_REPLICA_PAIR.fullmatch(v) for v in value):
        return None
    return (
        "must be the literal '*' or a list of replicas in the following format: "
        "[partitionId]:[brokerId],[partitionId]:[brokerId],..."
    )


def _format_version(value: Parsed) -> str | None:
    assert isinstance(value, str)
    return None if _FORMAT_VERSION.fullmatch(value) else "Unknown metadata.version"


_B, _S, _I, _L, _D, _LIST = (
    ConfigType.BOOLEAN,
    ConfigType.STRING,
    ConfigType.INT,
    ConfigType.LONG,
    ConfigType.DOUBLE,
    ConfigType.LIST,
)
_MAX = str(LONG_MAX)
_WEEK_MS = str(7 * 24 * 3600 * 1000)

_DEFS = (
    # name, type, default, kops acts on it, check; broker synonyms; doc
    ("cleanup.policy", _LIST, "delete", True, _cleanup_policy,
     ("log.cleanup.policy",),
     "Old segments are deleted (retention.ms, retention.bytes), compacted to the latest "
     "value per key, or both."),
    ("compression.gzip.level", _I, "-1", True, _gzip_level,
     ("compression.gzip.level",),
     "Level used when the broker itself compresses with gzip: 1-9, or -1 for the default."),
    ("compression.lz4.level", _I, "9", True, _between(1, 17),
     ("compression.lz4.level",),
     "Level used when the broker itself compresses with lz4 (1-17)."),
    ("compression.type", _S, "producer", True, _one_of(*COMPRESSION_TYPES),
     ("compression.type",),
     "Codec batches are stored in: producer keeps each batch as sent; uncompressed, gzip, "
     "snappy, lz4 or zstd re-compress batches sent with another codec."),
    ("compression.zstd.level", _I, "3", True, _between(-131072, 22),
     ("compression.zstd.level",),
     "Level used when the broker itself compresses with zstd (-131072 to 22)."),
    ("delete.retention.ms", _L, "86400000", True, _at_least(0),
     ("log.cleaner.delete.retention.ms", "delete.retention.ms"),
     "How long tombstones stay readable once compaction reached them."),
    ("file.delete.delay.ms", _L, "60000", False, _at_least(0),
     ("log.segment.delete.delay.ms",),
     "Delay before the files of a deleted segment are removed."),
    ("flush.messages", _L, _MAX, False, _at_least(1),
     ("log.flush.interval.messages",),
     "Force an fsync after this many messages."),
    ("flush.ms", _L, _MAX, False, _at_least(0),
     ("log.flush.interval.ms", "log.flush.scheduler.interval.ms"),
     "Force an fsync after this much time."),
    ("follower.replication.throttled.replicas", _LIST, "", False, _throttled_replicas,
     (),
     "Replicas (partition:broker, or *) whose follower fetches are throttled."),
    ("index.interval.bytes", _I, "4096", True, _at_least(0),
     ("log.index.interval.bytes",),
     "Bytes of log between two offset-index entries."),
    ("leader.replication.throttled.replicas", _LIST, "", False, _throttled_replicas,
     (),
     "Replicas (partition:broker, or *) whose leader-side replication is throttled."),
    ("local.retention.bytes", _L, "-2", False, _at_least(-2),
     ("log.local.retention.bytes",),
     "Local retention by size with tiered storage (-2: retention.bytes)."),
    ("local.retention.ms", _L, "-2", False, _at_least(-2),
     ("log.local.retention.ms",),
     "Local retention by time with tiered storage (-2: retention.ms)."),
    ("max.compaction.lag.ms", _L, _MAX, False, _at_least(1),
     ("log.cleaner.max.compaction.lag.ms",),
     "Longest time a record may stay uncompacted."),
    ("max.message.bytes", _I, "1048588", True, _at_least(0),
     ("message.max.bytes",),
     "Largest record batch the topic accepts (after any re-compression)."),
    ("message.downconversion.enable", _B, "true", False, None,
     ("log.message.downconversion.enable",),
     "Whether old clients' fetches get batches down-converted to older formats."),
    ("message.format.version", _S, "3.0-IV1", False, _format_version,
     ("log.message.format.version",),
     "Record format version to write (deprecated; ignored since Kafka 3.0)."),
    ("message.timestamp.after.max.ms", _L, _MAX, False, _at_least(0),
     ("log.message.timestamp.after.max.ms",),
     "How far in the future a record's timestamp may be (CreateTime topics)."),
    ("message.timestamp.before.max.ms", _L, _MAX, False, _at_least(0),
     ("log.message.timestamp.before.max.ms",),
     "How far in the past a record's timestamp may be (CreateTime topics)."),
    ("message.timestamp.difference.max.ms", _L, _MAX, False, _at_least(0),
     ("log.message.timestamp.difference.max.ms",),
     "Largest gap between a record's timestamp and the broker's clock (deprecated)."),
    ("message.timestamp.type", _S, "CreateTime", True, _one_of("CreateTime", "LogAppendTime"),
     ("log.message.timestamp.type",),
     "Record timestamps are the producer's (CreateTime) or the broker's (LogAppendTime)."),
    ("min.cleanable.dirty.ratio", _D, "0.5", True, _between(0, 1),
     ("log.cleaner.min.cleanable.ratio",),
     "Share of uncompacted log that makes a compacted partition due for cleaning."),
    ("min.compaction.lag.ms", _L, "0", False, _at_least(0),
     ("log.cleaner.min.compaction.lag.ms",),
     "Shortest time a record stays uncompacted."),
    ("min.insync.replicas", _I, "1", True, _at_least(1),
     ("min.insync.replicas",),
     "In-sync replicas an acks=all produce needs."),
    ("preallocate", _B, "false", False, None,
     ("log.preallocate",),
     "Whether new segment files are preallocated."),
    ("remote.log.copy.disable", _B, "false", False, None,
     (),
     "Stop copying segments to tiered storage (reads stay possible)."),
    ("remote.log.delete.on.disable", _B, "false", False, None,
     (),
     "Delete tiered data when tiered storage is turned off for the topic."),
    ("remote.storage.enable", _B, "false", False, None,
     (),
     "Tiered storage for the topic (kops has none: only false is accepted)."),
    ("retention.bytes", _L, "-1", True, None,
     ("log.retention.bytes",),
     "Size a partition may reach before old segments are deleted (-1: no limit)."),
    ("retention.ms", _L, _WEEK_MS, True, _at_least(-1),
     ("log.retention.ms", "log.retention.minutes", "log.retention.hours"),
     "How long records are kept before their segment is deleted (-1: forever)."),
    ("segment.bytes", _I, str(1 << 30), True, _at_least(14),
     ("log.segment.bytes",),
     "Size at which a segment file is closed and a new one started."),
    ("segment.index.bytes", _I, str(10 << 20), True, _at_least(4),
     ("log.index.size.max.bytes",),
     "Size of a segment's offset index, which caps the batches one segment indexes."),
    ("segment.jitter.ms", _L, "0", False, _at_least(0),
     ("log.roll.jitter.ms", "log.roll.jitter.hours"),
     "Random jitter subtracted from segment.ms."),
    ("segment.ms", _L, _WEEK_MS, True, _at_least(1),
     ("log.roll.ms", "log.roll.hours"),
     "Age at which a segment is closed even if not full, so retention can reach it."),
    ("unclean.leader.election.enable", _B, "false", False, None,
     ("unclean.leader.election.enable",),
     "Whether an out-of-sync replica may become leader."),
)  # fmt: skip

CATALOGUE: dict[str, TopicConfigDef] = {
    name: TopicConfigDef(name, kind, default, doc, acted, synonyms, check)
    for name, kind, default, acted, check, synonyms, doc in _DEFS
}


def _invalid(name: str, value: str, problem: str) -> ConfigError:
    return ConfigError(f"Invalid value {value} for configuration {name}: {problem}")


def parse_value(definition: TopicConfigDef, value: str) -> Parsed:
    """A value parsed as Kafka's ConfigDef parses its type; raises ConfigError."""
    name, kind, text = definition.name, definition.type, value.strip()
    if kind in (ConfigType.INT, ConfigType.LONG, ConfigType.SHORT):
        low, high = _INT_RANGE if kind != ConfigType.LONG else _LONG_RANGE
        if not _INTEGER.fullmatch(text) or not low <= int(text) <= high:
            raise _invalid(name, value, f"Not a number of type {kind.name}")
        return int(text)
    if kind == ConfigType.DOUBLE:
        if not _DECIMAL.fullmatch(text) or not math.isfinite(float(text)):
            raise _invalid(name, value, "Not a number of type DOUBLE")
        return float(text)
    if kind == ConfigType.BOOLEAN:
        if text.lower() not in ("true", "false"):
            raise _invalid(name, value, "Expected value to be either true or false")
        return text.lower() == "true"
    if kind == ConfigType.LIST:
        return [part.strip() for part in text.split(",")] if text else []
    return text


def validate_topic_config(
    config: Mapping[str, str], defaults: Mapping[str, str] | None = None
) -> None:
    """Refuse what Kafka refuses: unknown names, values of the wrong type or out of
    range, and contradicting settings (checked over `defaults`, the broker's topic
    defaults, when given). Raises ConfigError (INVALID_CONFIG)."""
    parsed: dict[str, Parsed] = {}
    for name, value in config.items():
        definition = CATALOGUE.get(name)
        if definition is None:
            raise ConfigError(f"Unknown topic config name: {name}")
        parsed[name] = parse_value(definition, value)
        problem = definition.check(parsed[name]) if definition.check else None
        if problem:
            raise _invalid(name, value, problem)
    if parsed.get("remote.storage.enable") is True:
        # What Kafka answers when remote.log.storage.system.enable is false.
        raise ConfigError(
            "Tiered Storage functionality is disabled in the broker. "
            "Topic cannot be configured with remote log storage."
        )

    def effective(name: str) -> Parsed:
        if name in parsed:
            return parsed[name]
        definition = CATALOGUE[name]
        return parse_value(definition, (defaults or {}).get(name, definition.default))

    min_lag, max_lag = effective("min.compaction.lag.ms"), effective("max.compaction.lag.ms")
    if _num(min_lag) > _num(max_lag):
        raise ConfigError(
            f"conflict topic config setting min.compaction.lag.ms ({min_lag}) > "
            f"max.compaction.lag.ms ({max_lag})"
        )
