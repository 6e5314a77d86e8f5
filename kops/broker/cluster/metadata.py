"""The cluster metadata image and the records that change it.

The controller quorum replicates opaque payloads in ``__cluster_metadata``; this
module is what goes into them. One Raft entry holds one list of records, applied
atomically: fencing a broker and moving its leaderships is one entry, so no
broker ever sees a fenced leader. Every broker replays the same committed
entries into a ``MetadataImage``, so the encoding must be deterministic and the
replay must refuse what would make images diverge rather than guess.

Sans-io: no clocks, sockets or files. The records are versioned compact JSON,
``{"v":1,"records":[{"type":"RegisterBroker",...}]}``; a snapshot is the image
itself in the same style, so a new broker needs no replay from offset zero.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias, TypeVar

from kops.broker.cluster.topics import topic_name_error
from kops.errors import KopsError

__all__ = [
    "BrokerInfo",
    "ChangePartition",
    "ChangeTopicConfigs",
    "CreatePartition",
    "CreateTopic",
    "FenceBroker",
    "MetadataError",
    "MetadataImage",
    "MetadataRecord",
    "PartitionInfo",
    "RegisterBroker",
    "RemoveTopic",
    "TopicInfo",
    "UnfenceBroker",
    "decode_records",
    "encode_records",
]

FORMAT_VERSION = 1
NO_LEADER = -1


class MetadataError(KopsError):
    """A record or snapshot that cannot be decoded, or that contradicts the image."""


@dataclass(frozen=True, slots=True)
class RegisterBroker:
    """A broker (re)joins; the new registration starts fenced until it catches up."""

    broker_id: int
    incarnation_id: str
    broker_epoch: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class FenceBroker:
    broker_id: int
    broker_epoch: int


@dataclass(frozen=True, slots=True)
class UnfenceBroker:
    broker_id: int
    broker_epoch: int


@dataclass(frozen=True, slots=True)
class CreateTopic:
    """``configs`` are (name, value) pairs sorted by name, so equal topics encode equally."""

    name: str
    topic_id: str
    configs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class CreatePartition:
    """Partitions are created in index order, each right after its topic or the previous one."""

    topic: str
    partition: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    leader: int
    leader_epoch: int = 0
    partition_epoch: int = 0


@dataclass(frozen=True, slots=True)
class ChangePartition:
    """A partition's new ISR and leadership in full (not a delta), one partition epoch on."""

    topic: str
    partition: int
    isr: tuple[int, ...]
    leader: int
    leader_epoch: int
    partition_epoch: int


@dataclass(frozen=True, slots=True)
class ChangeTopicConfigs:
    """A topic's overrides in full (sorted pairs, as in ``CreateTopic``), replacing the old set."""

    name: str
    configs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RemoveTopic:
    name: str


MetadataRecord: TypeAlias = (
    RegisterBroker
    | FenceBroker
    | UnfenceBroker
    | CreateTopic
    | CreatePartition
    | ChangePartition
    | ChangeTopicConfigs
    | RemoveTopic
)


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """A registration; ``registered_offset`` is the entry a broker must reach to be unfenced."""

    broker_id: int
    incarnation_id: str
    broker_epoch: int
    host: str
    port: int
    fenced: bool
    registered_offset: int


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    topic: str
    partition: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    leader: int
    leader_epoch: int
    partition_epoch: int


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    topic_id: str
    configs: tuple[tuple[str, str], ...]
    partition_count: int


# ---- the codec ----------------------------------------------------------------------------

_T = TypeVar("_T")


def _scalar(kind: type[_T], label: str) -> Callable[[object, str], _T]:
    def decode(value: object, what: str) -> _T:
        # bool is an int to isinstance, but true is not a broker id
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise MetadataError(f"{what}: expected {label}, got {type(value).__name__}")
        return value

    return decode


_int = _scalar(int, "an integer")
_str = _scalar(str, "a string")
_bool = _scalar(bool, "a boolean")


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise MetadataError(f"{what}: expected a list, got {type(value).__name__}")
    return value


def _ints(value: object, what: str) -> tuple[int, ...]:
    return tuple(_int(v, what) for v in _list(value, what))


def _pairs(value: object, what: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for pair in _list(value, what):
        if not isinstance(pair, list) or len(pair) != 2:
            raise MetadataError(f"{what}: expected [name, value] pairs")
        pairs.append((_str(pair[0], what), _str(pair[1], what)))
    return tuple(pairs)


# Field annotations are strings (postponed evaluation); each names its decoder.
_DECODERS: dict[str, Callable[[object, str], Any]] = {
    "int": _int,
    "str": _str,
    "bool": _bool,
    "tuple[int, ...]": _ints,
    "tuple[tuple[str, str], ...]": _pairs,
}

_RECORD_TYPES: dict[str, type[MetadataRecord]] = {
    cls.__name__: cls
    for cls in (
        RegisterBroker,
        FenceBroker,
        UnfenceBroker,
        CreateTopic,
        CreatePartition,
        ChangePartition,
        ChangeTopicConfigs,
        RemoveTopic,
    )
}

_SHAPES: dict[type, tuple[tuple[str, Callable[[object, str], Any]], ...]] = {
    cls: tuple((f.name, _DECODERS[str(f.type)]) for f in dataclasses.fields(cls))
    for cls in (*_RECORD_TYPES.values(), BrokerInfo, PartitionInfo, TopicInfo)
}


def _to_json(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name, _ in _SHAPES[type(obj)]}


def _from_json(cls: type[_T], obj: object, what: str, tag: str | None = None) -> _T:
    """Every field present and of its declared type; an extra one is refused too.

    Refusing unknown fields keeps replay exact: a field an older broker would
    silently drop is one a newer broker might act on, and the images would part.
    """
    if not isinstance(obj, dict):
        raise MetadataError(f"{what}: expected an object, got {type(obj).__name__}")
    shape = _SHAPES[cls]
    extra = obj.keys() - {name for name, _ in shape} - {tag}
    if extra:
        raise MetadataError(f"{what}: unknown fields {sorted(extra)}")
    values = {}
    for name, decode in shape:
        if name not in obj:
            raise MetadataError(f"{what}: missing field {name!r}")
        values[name] = decode(obj[name], f"{what}.{name}")
    return cls(**values)


def _dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")


def _loads(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise MetadataError(f"{what} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MetadataError(f"{what} is not a JSON object")
    if document.get("v") != FORMAT_VERSION:
        raise MetadataError(f"{what} is not in format version {FORMAT_VERSION}")
    return document


def encode_records(records: Sequence[MetadataRecord]) -> bytes:
    """One Raft entry's payload; equal records always give equal bytes."""
    return _dumps(
        {
            "v": FORMAT_VERSION,
            "records": [{"type": type(r).__name__, **_to_json(r)} for r in records],
        }
    )


def decode_records(payload: bytes) -> list[MetadataRecord]:
    document = _loads(payload, "metadata entry")
    records: list[MetadataRecord] = []
    for i, obj in enumerate(_list(document.get("records"), "metadata entry records")):
        what = f"record {i}"
        kind = obj.get("type") if isinstance(obj, dict) else None
        cls = _RECORD_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise MetadataError(f"{what}: unknown record type {kind!r}")
        records.append(_from_json(cls, obj, what, tag="type"))
    return records


# ---- the image ----------------------------------------------------------------------------

_BrokerLookup: TypeAlias = Callable[[int], BrokerInfo | None]


def _check_partition(p: PartitionInfo, broker: _BrokerLookup) -> None:
    """What every partition must satisfy whatever led to it: no record may break it."""
    what = f"partition {p.topic}-{p.partition}"
    if not p.replicas or len(set(p.replicas)) != len(p.replicas):
        raise MetadataError(f"{what}: replicas {list(p.replicas)} are empty or repeat a broker")
    unknown = [r for r in p.replicas if broker(r) is None]
    if unknown:
        raise MetadataError(f"{what}: replicas {unknown} are not registered brokers")
    if not p.isr or len(set(p.isr)) != len(p.isr) or not set(p.isr) <= set(p.replicas):
        raise MetadataError(f"{what}: ISR {list(p.isr)} is not a non-empty subset of the replicas")
    if p.leader != NO_LEADER:
        leader = broker(p.leader)
        if p.leader not in p.isr or leader is None or leader.fenced:
            raise MetadataError(f"{what}: leader {p.leader} is not an unfenced ISR member")
    if p.leader_epoch < 0 or p.partition_epoch < 0:
        raise MetadataError(f"{what}: negative epoch")


def _check_configs(name: str, configs: tuple[tuple[str, str], ...]) -> None:
    keys = [k for k, _ in configs]
    if keys != sorted(set(keys)):
        raise MetadataError(f"topic {name}: configs are not sorted by a unique name")


class _Staged:
    """One entry's changes laid over the image, so that a refused entry changes nothing.

    A value of None in ``topics`` or ``partitions`` is a removal.
    """

    def __init__(self, image: MetadataImage) -> None:
        self.image = image
        self.brokers: dict[int, BrokerInfo] = {}
        self.topics: dict[str, TopicInfo | None] = {}
        self.partitions: dict[tuple[str, int], PartitionInfo | None] = {}
        self.next_broker_epoch = image.next_broker_epoch
        self.fenced_here: set[int] = set()

    def broker(self, broker_id: int) -> BrokerInfo | None:
        if broker_id in self.brokers:
            return self.brokers[broker_id]
        return self.image.brokers.get(broker_id)

    def topic(self, name: str) -> TopicInfo | None:
        return self.topics[name] if name in self.topics else self.image.topics.get(name)

    def partition(self, key: tuple[str, int]) -> PartitionInfo | None:
        if key in self.partitions:
            return self.partitions[key]
        return self.image.partitions.get(key)

    def all_topics(self) -> Iterator[TopicInfo]:
        for name in self.image.topics.keys() | self.topics.keys():
            if (t := self.topic(name)) is not None:
                yield t

    def all_partitions(self) -> Iterator[PartitionInfo]:
        for key in self.image.partitions.keys() | self.partitions.keys():
            if (p := self.partition(key)) is not None:
                yield p

    def stage(self, record: MetadataRecord, offset: int) -> None:
        if isinstance(record, RegisterBroker):
            self._register(record, offset)
        elif isinstance(record, FenceBroker | UnfenceBroker):
            self._fence(record.broker_id, record.broker_epoch, isinstance(record, FenceBroker))
        elif isinstance(record, CreateTopic):
            self._create_topic(record)
        elif isinstance(record, CreatePartition):
            self._create_partition(record)
        elif isinstance(record, ChangePartition):
            self._change_partition(record)
        elif isinstance(record, ChangeTopicConfigs):
            t = self.topic(record.name)
            if t is None:
                raise MetadataError(f"topic {record.name} does not exist")
            _check_configs(record.name, record.configs)
            self.topics[record.name] = replace(t, configs=record.configs)
        else:
            self._remove_topic(record)

    def _register(self, r: RegisterBroker, offset: int) -> None:
        if r.broker_id < 0 or not r.incarnation_id or not 0 <= r.port <= 65535:
            raise MetadataError(f"broker {r.broker_id}: invalid registration {r}")
        if r.broker_epoch < self.next_broker_epoch:
            # Epochs are never reused: a heartbeat with an old epoch must stay stale.
            raise MetadataError(
                f"broker {r.broker_id}: epoch {r.broker_epoch} is below the next broker epoch "
                f"{self.next_broker_epoch}"
            )
        self.brokers[r.broker_id] = BrokerInfo(
            r.broker_id, r.incarnation_id, r.broker_epoch, r.host, r.port, True, offset
        )
        self.next_broker_epoch = r.broker_epoch + 1
        self.fenced_here.add(r.broker_id)

    def _fence(self, broker_id: int, broker_epoch: int, fence: bool) -> None:
        b = self.broker(broker_id)
        if b is None:
            raise MetadataError(f"broker {broker_id} is not registered")
        if b.broker_epoch != broker_epoch:
            raise MetadataError(
                f"broker {broker_id}: epoch {broker_epoch} is stale (registered {b.broker_epoch})"
            )
        if b.fenced == fence:
            raise MetadataError(f"broker {broker_id} is already {'' if fence else 'un'}fenced")
        self.brokers[broker_id] = replace(b, fenced=fence)
        if fence:
            self.fenced_here.add(broker_id)

    def _create_topic(self, r: CreateTopic) -> None:
        if (problem := topic_name_error(r.name)) is not None:
            raise MetadataError(problem)
        if self.topic(r.name) is not None:
            raise MetadataError(f"topic {r.name} already exists")
        if not r.topic_id or any(t.topic_id == r.topic_id for t in self.all_topics()):
            raise MetadataError(f"topic {r.name}: topic id {r.topic_id!r} is empty or in use")
        _check_configs(r.name, r.configs)
        self.topics[r.name] = TopicInfo(r.name, r.topic_id, r.configs, 0)

    def _create_partition(self, r: CreatePartition) -> None:
        t = self.topic(r.topic)
        if t is None:
            raise MetadataError(f"partition {r.topic}-{r.partition}: unknown topic")
        if r.partition != t.partition_count:
            raise MetadataError(
                f"partition {r.topic}-{r.partition}: the next partition is {t.partition_count}"
            )
        p = PartitionInfo(
            r.topic, r.partition, r.replicas, r.isr, r.leader, r.leader_epoch, r.partition_epoch
        )
        _check_partition(p, self.broker)
        self.partitions[(r.topic, r.partition)] = p
        self.topics[r.topic] = replace(t, partition_count=t.partition_count + 1)

    def _change_partition(self, r: ChangePartition) -> None:
        old = self.partition((r.topic, r.partition))
        what = f"partition {r.topic}-{r.partition}"
        if old is None:
            raise MetadataError(f"{what}: unknown partition")
        if r.partition_epoch != old.partition_epoch + 1:
            raise MetadataError(
                f"{what}: partition epoch {r.partition_epoch} does not follow {old.partition_epoch}"
            )
        if r.leader_epoch < old.leader_epoch or (
            r.leader != old.leader and r.leader_epoch == old.leader_epoch
        ):
            raise MetadataError(
                f"{what}: leader epoch {r.leader_epoch} after {old.leader_epoch} "
                f"(leader {old.leader} -> {r.leader})"
            )
        new = replace(
            old,
            isr=r.isr,
            leader=r.leader,
            leader_epoch=r.leader_epoch,
            partition_epoch=r.partition_epoch,
        )
        _check_partition(new, self.broker)
        self.partitions[(r.topic, r.partition)] = new

    def _remove_topic(self, r: RemoveTopic) -> None:
        t = self.topic(r.name)
        if t is None:
            raise MetadataError(f"topic {r.name} does not exist")
        self.topics[r.name] = None
        for i in range(t.partition_count):
            self.partitions[(r.name, i)] = None

    def finish(self) -> None:
        """Checks that span records: a broker fenced by this entry must lead nothing after it."""
        fenced = {b for b in self.fenced_here if (info := self.broker(b)) and info.fenced}
        if not fenced:
            return
        for p in self.all_partitions():
            if p.leader in fenced:
                raise MetadataError(
                    f"partition {p.topic}-{p.partition}: fenced broker {p.leader} still leads"
                )

    def commit(self, offset: int) -> None:
        image = self.image
        image.brokers.update(self.brokers)
        for name, t in self.topics.items():
            if t is None:
                image.topics.pop(name, None)
            else:
                image.topics[name] = t
        for key, p in self.partitions.items():
            if p is None:
                image.partitions.pop(key, None)
            else:
                image.partitions[key] = p
        image.next_broker_epoch = self.next_broker_epoch
        image.offset = offset


@dataclass(slots=True)
class MetadataImage:
    """The cluster as the committed metadata log describes it up to ``offset``.

    Every broker holds one and applies each committed entry to it in log order;
    the active controller reads it (and never writes it) to decide what to propose.
    """

    brokers: dict[int, BrokerInfo] = field(default_factory=dict)
    topics: dict[str, TopicInfo] = field(default_factory=dict)
    partitions: dict[tuple[str, int], PartitionInfo] = field(default_factory=dict)
    offset: int = -1
    next_broker_epoch: int = 1

    @property
    def topic_count(self) -> int:
        return len(self.topics)

    def apply(self, records: Sequence[MetadataRecord], offset: int) -> None:
        """Apply one committed entry, all of it or (MetadataError) none of it."""
        if offset <= self.offset:
            raise MetadataError(f"entry offset {offset} does not follow {self.offset}")
        staged = _Staged(self)
        for record in records:
            staged.stage(record, offset)
        staged.finish()
        staged.commit(offset)

    def copy(self) -> MetadataImage:
        """An independent image (the infos are immutable, so the dicts are all that is copied)."""
        return MetadataImage(
            dict(self.brokers),
            dict(self.topics),
            dict(self.partitions),
            self.offset,
            self.next_broker_epoch,
        )

    def live_brokers(self) -> list[int]:
        """Unfenced brokers, sorted: the ones that may lead or be assigned new replicas."""
        return sorted(b.broker_id for b in self.brokers.values() if not b.fenced)

    def partitions_of(self, topic: str) -> list[PartitionInfo]:
        t = self.topics.get(topic)
        if t is None:
            return []
        return [self.partitions[(topic, i)] for i in range(t.partition_count)]

    def partitions_led_by(self, broker_id: int) -> list[PartitionInfo]:
        return [
            self.partitions[k]
            for k in sorted(self.partitions)
            if self.partitions[k].leader == broker_id
        ]

    def encode_snapshot(self) -> bytes:
        return _dumps(
            {
                "v": FORMAT_VERSION,
                "offset": self.offset,
                "next_broker_epoch": self.next_broker_epoch,
                "brokers": [_to_json(self.brokers[b]) for b in sorted(self.brokers)],
                "topics": [_to_json(self.topics[t]) for t in sorted(self.topics)],
                "partitions": [_to_json(self.partitions[k]) for k in sorted(self.partitions)],
            }
        )

    @classmethod
    def decode_snapshot(cls, data: bytes) -> MetadataImage:
        """The image a snapshot holds, checked as strictly as the entries that built it."""
        document = _loads(data, "metadata snapshot")
        image = cls(
            offset=_int(document.get("offset"), "snapshot offset"),
            next_broker_epoch=_int(document.get("next_broker_epoch"), "snapshot next_broker_epoch"),
        )
        if image.offset < -1 or image.next_broker_epoch < 1:
            raise MetadataError("snapshot: offset or next broker epoch out of range")
        for i, obj in enumerate(_list(document.get("brokers"), "snapshot brokers")):
            b = _from_json(BrokerInfo, obj, f"snapshot broker {i}")
            if b.broker_id in image.brokers or b.broker_id < 0:
                raise MetadataError(f"snapshot: broker id {b.broker_id} repeated or negative")
            if not b.broker_epoch < image.next_broker_epoch or b.registered_offset > image.offset:
                raise MetadataError(f"snapshot: broker {b.broker_id} is ahead of the snapshot")
            image.brokers[b.broker_id] = b
        topic_ids: set[str] = set()
        for i, obj in enumerate(_list(document.get("topics"), "snapshot topics")):
            t = _from_json(TopicInfo, obj, f"snapshot topic {i}")
            if (problem := topic_name_error(t.name)) is not None:
                raise MetadataError(f"snapshot: {problem}")
            if t.name in image.topics or not t.topic_id or t.topic_id in topic_ids:
                raise MetadataError(f"snapshot: topic {t.name} or its id is repeated or empty")
            _check_configs(t.name, t.configs)
            image.topics[t.name] = t
            topic_ids.add(t.topic_id)
        for i, obj in enumerate(_list(document.get("partitions"), "snapshot partitions")):
            p = _from_json(PartitionInfo, obj, f"snapshot partition {i}")
            key = (p.topic, p.partition)
            owner = image.topics.get(p.topic)
            if (
                owner is None
                or key in image.partitions
                or not 0 <= p.partition < owner.partition_count
            ):
                raise MetadataError(f"snapshot: partition {p.topic}-{p.partition} is not expected")
            _check_partition(p, image.brokers.get)
            image.partitions[key] = p
        if len(image.partitions) != sum(t.partition_count for t in image.topics.values()):
            raise MetadataError("snapshot: a topic is missing partitions")
        return image
