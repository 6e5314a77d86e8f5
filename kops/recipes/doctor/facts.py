"""What the doctor's rules look at and what they report: plain data, no cluster needed.

:class:`ClusterFacts` and :class:`TopicFacts` are what :func:`kops.recipes.doctor.gather`
collects (or a test builds by hand); a :class:`Finding` is one problem and its fix. Also here:
the Java ``.properties`` parser for client config files, which settings make a config a
producer's or a consumer's, and the names of delay tier topics and sweep results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kops.recipes.delay.tiers import DEFAULT_TEMPLATE, format_tier
from kops.timeparse import parse_duration

ERROR = "error"
WARNING = "warning"

RULES: tuple[str, ...] = (
    "producer-acks",
    "producer-idempotence",
    "producer-in-flight",
    "producer-retries",
    "consumer-auto-commit",
    "replication-factor",
    "default-replication-factor",
    "min-insync-replicas",
    "unclean-leader-election",
    "delay-tier-retention",
    "dlq-retention",
    "offsets-replication-factor",
    "sweep-partitions",
)

DEFAULT_DLQ_REPLAY_WINDOW = 7 * 86400.0
OFFSETS_TOPIC = "__consumer_offsets"
WANTED_RF = 3

#: Settings that make a config a producer's (librdkafka and Java names, aliases included).
PRODUCER_KEYS = frozenset(
    {
        "acks", "request.required.acks", "enable.idempotence",
        "max.in.flight.requests.per.connection", "max.in.flight", "retries",
        "message.send.max.retries", "linger.ms", "queue.buffering.max.ms", "batch.size",
        "batch.num.messages", "compression.type", "compression.codec", "delivery.timeout.ms",
        "message.timeout.ms", "transactional.id", "partitioner", "enable.gapless.guarantee",
        "key.serializer", "value.serializer",
    }
)  # fmt: skip
#: Settings that make a config a consumer's.
CONSUMER_KEYS = frozenset(
    {
        "group.id", "group.instance.id", "enable.auto.commit", "enable.auto.offset.store",
        "auto.commit.interval.ms", "auto.offset.reset", "isolation.level",
        "session.timeout.ms", "max.poll.interval.ms", "heartbeat.interval.ms",
        "partition.assignment.strategy", "key.deserializer", "value.deserializer",
        "max.poll.records",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # "error" | "warning"
    subject: str  # a topic, "broker N", or a client setting
    message: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class TopicFacts:
    name: str
    partitions: int
    #: The smallest replica count over the topic's partitions (the weakest one counts).
    replication_factor: int
    #: Effective values (the topic's own or the broker default), as DescribeConfigs says.
    configs: Mapping[str, str] = field(default_factory=dict)
    #: Keys set on the topic itself (DYNAMIC_TOPIC_CONFIG), not inherited from the broker.
    overrides: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ClusterFacts:
    brokers: int
    topics: Sequence[TopicFacts] = ()
    #: broker id -> its configs; empty when the cluster would not describe them.
    broker_configs: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    #: What could not be looked at (refused DescribeConfigs...), for people.
    notes: Sequence[str] = ()

    def topic(self, name: str) -> TopicFacts | None:
        return next((t for t in self.topics if t.name == name), None)


@dataclass(frozen=True)
class DoctorOptions:
    #: Topics the topic rules look at; None: every non-internal topic.
    topics: Sequence[str] | None = None
    dlq_replay_window: float = DEFAULT_DLQ_REPLAY_WINDOW
    #: Template of kops delay tier topic names (see :mod:`kops.recipes.delay.tiers`).
    delay_template: str = DEFAULT_TEMPLATE
    #: Partition count ``kops bench sweep`` recommended for ``topics`` (None: no sweep given).
    sweep_partitions: int | None = None
    client_library: str = "librdkafka"  # or "java"
    ignore: frozenset[str] = frozenset()


@dataclass
class DoctorReport:
    findings: list[Finding]
    brokers: int
    topics_checked: list[str]
    client_roles: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


# --------------------------------------------------------------------------- small helpers


def duration_text(ms: float) -> str:
    return format_tier(ms / 1000) if ms > 0 else f"{ms:g}ms"


def as_int(value: str | None) -> int | None:
    try:
        return None if value is None else int(str(value).strip())
    except ValueError:
        return None


def as_bool(value: str | None) -> bool | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    return True if text == "true" else False if text == "false" else None


def get_setting(config: Mapping[str, Any], *names: str) -> str | None:
    """The first of ``names`` (a setting and its librdkafka aliases) the config sets."""
    for name in names:
        if name in config and config[name] is not None:
            return str(config[name]).strip()
    return None


def parse_properties(text: str) -> dict[str, str]:
    """A Java ``.properties`` file: ``key=value``, ``key: value`` or ``key value`` lines,
    ``#``/``!`` comments, ``\\`` line continuations and escapes (``\\t``, ``\\uXXXX``...)."""
    out: dict[str, str] = {}
    logical = ""
    for raw in [*text.splitlines(), ""]:
        line = raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:  # an odd run of backslashes continues the line
            logical += line[:-1]
            continue
        logical += line
        match = re.match(r"((?:\\.|[^=:\s\\])*)\s*[=:\s]?\s*(.*)$", logical, re.S)
        key, value = (match.group(1), match.group(2)) if match else (logical, "")
        out[_unescape(key)] = _unescape(value)
        logical = ""
    return out


def _unescape(text: str) -> str:
    simple = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}

    def one(m: re.Match[str]) -> str:
        c = m.group(1)
        if c.startswith("u") and len(c) == 5:
            return chr(int(c[1:], 16))
        return simple.get(c, c)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", one, text)


def connection_config(config: Mapping[str, str]) -> dict[str, str]:
    """``config`` without producer and consumer behaviour settings: what doctor's own admin
    client connects with (librdkafka refuses some combinations the rules exist to report,
    e.g. ``max.in.flight`` > 5 with idempotence)."""
    return {k: v for k, v in config.items() if k not in PRODUCER_KEYS | CONSUMER_KEYS}


def client_roles(config: Mapping[str, str]) -> list[str]:
    """``producer`` and/or ``consumer``: what the settings say the config is for."""
    roles = []
    if PRODUCER_KEYS & set(config):
        roles.append("producer")
    if CONSUMER_KEYS & set(config):
        roles.append("consumer")
    return roles


_TIER_LABEL = r"(?P<tier>\d+(?:ms|s|m|h|d))"


def tier_delay(topic: str, template: str = DEFAULT_TEMPLATE) -> float | None:
    """The delay (seconds) of a kops delay tier topic named by ``template``; None when the
    name is not a tier's (the cancel, stats and dlq topics are not)."""
    pattern = re.escape(template)
    pattern = pattern.replace(re.escape("{tier}"), _TIER_LABEL)
    pattern = pattern.replace(re.escape("{seconds}"), r"(?P<seconds>\d+(?:\.\d+)?)")
    pattern = pattern.replace(re.escape("{ms}"), r"(?P<ms>\d+)")
    m = re.fullmatch(pattern, topic)
    if m is None:
        return None
    groups = m.groupdict()
    if groups.get("tier"):
        return parse_duration(groups["tier"])
    if groups.get("seconds"):
        return float(groups["seconds"])
    if groups.get("ms"):
        return int(groups["ms"]) / 1000
    return None


def sweep_recommendation(data: Any) -> int:
    """The partition count of a ``kops bench sweep --json`` result. Raises ValueError saying
    why when it has none (swept without ``-t``: no target, no recommendation)."""
    rec = data.get("recommendation") if isinstance(data, dict) else None
    if not isinstance(rec, dict):
        raise ValueError("not a `kops bench sweep --json` result (no recommendation)")
    partitions = rec.get("partitions")
    if not isinstance(partitions, int) or partitions < 1:
        raise ValueError(
            "the sweep has no recommended partition count: run `kops bench sweep` with "
            "--target-throughput (-t MB/s)"
        )
    return partitions


def load_sweep(text: str) -> int:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    return sweep_recommendation(data)
