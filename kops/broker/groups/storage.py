"""Committed offsets and group metadata in the internal topic `__consumer_offsets`.

Placement is Kafka's: a group lives in partition
`abs(javaStringHashCode(group_id)) % partitions` of the topic, so the same
group maps to the same partition number as on a Kafka cluster.

Record encoding (kops's own; both keys and values are compact UTF-8 JSON):

    offset key    ["o", group_id, topic, partition]
    offset value  {"v": 1, "o": offset, "e": leader_epoch, "m": metadata, "t": commit_ms}
    group key     ["g", group_id]
    group value   {"v": 1, "type": protocol_type, "gen": generation, "proto": protocol_name,
                   "leader": leader, "t": state_ms,
                   "members": [{"id", "iid", "cid", "host", "st", "rt", "meta", "asg"}]}

`meta` (the member's subscription for the chosen protocol) and `asg` (its
assignment) are base64. A null value is a tombstone: the offset or group was
deleted. Keys are serialised deterministically (JSON arrays, no whitespace) so
compaction sees equal keys as equal bytes. The topic is `cleanup.policy=compact`,
so only the latest value of each key has to survive; loading replays a
partition in offset order and the last record per key wins.

Only the partition's leader appends: a coordinator that has just lost
leadership (and not yet unloaded the partition's groups) is refused with
NotCoordinatorError, which clients see as NOT_COORDINATOR.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode

from kops.broker.groups.group import Group, GroupState, Member, OffsetEntry
from kops.broker.log.config import InvalidProducerEpochError
from kops.protocol.batch import (
    ATTR_TRANSACTIONAL,
    CONTROL_COMMIT,
    build_batch,
    decode_records,
    marker_type,
    parse_header,
)

if TYPE_CHECKING:
    from kops.broker.cluster.view import ClusterView

log = logging.getLogger("kops.broker.groups")

OFFSETS_TOPIC = "__consumer_offsets"
FORMAT_VERSION = 1
# Kafka's offsets.topic.segment.bytes: small segments so compaction has closed
# segments to work on long before the 1 GiB default would roll.
OFFSETS_SEGMENT_BYTES = 100 * 1024 * 1024
# Large groups write big assignments in one record; allow more than the 1 MB default.
OFFSETS_MAX_MESSAGE_BYTES = 10 * 1024 * 1024
# The topic's settings, whoever creates it (a single broker at start, a cluster on first use).
OFFSETS_TOPIC_CONFIGS: Mapping[str, str] = {
    "cleanup.policy": "compact",
    "segment.bytes": str(OFFSETS_SEGMENT_BYTES),
    "max.message.bytes": str(OFFSETS_MAX_MESSAGE_BYTES),
}

Record = tuple[bytes, bytes | None]
_Replayed = tuple[bytes | None, bytes | None]


class NotCoordinatorError(RuntimeError):
    """This broker does not lead the group's offsets partition (any more)."""


def write_error(exc: Exception, what: str) -> ErrorCode:
    """Log a failed write to the offsets topic and return the code to answer with.

    As Kafka's GroupMetadataManager: a lost leadership is NOT_COORDINATOR, so
    the client looks the coordinator up again instead of retrying here; other
    failures are COORDINATOR_NOT_AVAILABLE, retriable at the same coordinator.
    """
    if isinstance(exc, NotCoordinatorError):
        log.warning("could not %s: %s", what, exc)
        return ErrorCode.not_coordinator
    if isinstance(exc, InvalidProducerEpochError):
        # A transactional write by a fenced producer (TxnOffsetCommit on a broker that is
        # not the id's coordinator): fatal for the client, as Kafka answers it (older
        # TxnOffsetCommit versions get INVALID_PRODUCER_EPOCH, see txn.state.for_version).
        log.warning("could not %s: %s", what, exc)
        return ErrorCode.producer_fenced
    log.error("could not %s", what, exc_info=exc)
    return ErrorCode.coordinator_not_available


def java_string_hash(text: str) -> int:
    """Java's String.hashCode: h = 31*h + c over UTF-16 code units, as a signed int32."""
    data = text.encode("utf-16-be", "surrogatepass")
    h = 0
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def partition_for(group_id: str, partitions: int) -> int:
    h = java_string_hash(group_id)
    # Kafka's Utils.abs maps Integer.MIN_VALUE to 0 instead of overflowing.
    return (0 if h == -(1 << 31) else abs(h)) % partitions


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def offset_key(group_id: str, topic: str, partition: int) -> bytes:
    return _json(["o", group_id, topic, partition])


def group_key(group_id: str) -> bytes:
    return _json(["g", group_id])


def offset_value(entry: OffsetEntry) -> bytes:
    return _json(
        {
            "v": FORMAT_VERSION,
            "o": entry.offset,
            "e": entry.leader_epoch,
            "m": entry.metadata,
            "t": entry.commit_timestamp,
        }
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def group_value(group: Group) -> bytes:
    members = [
        {
            "id": m.member_id,
            "iid": m.instance_id,
            "cid": m.client_id,
            "host": m.client_host,
            "st": m.session_timeout_ms,
            "rt": m.rebalance_timeout_ms,
            "meta": _b64(m.metadata(group.protocol_name)),
            "asg": _b64(m.assignment),
        }
        for m in group.members.values()
    ]
    return _json(
        {
            "v": FORMAT_VERSION,
            "type": group.protocol_type,
            "gen": group.generation,
            "proto": group.protocol_name,
            "leader": group.leader,
            "t": group.state_timestamp,
            "members": members,
        }
    )


@dataclass(slots=True)
class StoredMember:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    metadata: bytes
    assignment: bytes


@dataclass(slots=True)
class StoredGroup:
    protocol_type: str | None
    generation: int
    protocol_name: str | None
    leader: str | None
    state_timestamp: int
    members: list[StoredMember]


def decode_group_value(data: bytes) -> StoredGroup:
    raw = json.loads(data)
    members = [
        StoredMember(
            m["id"],
            m.get("iid"),
            m.get("cid", ""),
            m.get("host", ""),
            int(m["st"]),
            int(m["rt"]),
            base64.b64decode(m.get("meta", "")),
            base64.b64decode(m.get("asg", "")),
        )
        for m in raw.get("members", [])
    ]
    return StoredGroup(
        raw.get("type"),
        int(raw["gen"]),
        raw.get("proto"),
        raw.get("leader"),
        int(raw.get("t", 0)),
        members,
    )


def decode_offset_value(data: bytes) -> OffsetEntry:
    raw = json.loads(data)
    return OffsetEntry(
        int(raw["o"]), int(raw.get("e", -1)), raw.get("m") or "", int(raw.get("t", 0))
    )


@dataclass
class LoadedState:
    """The latest value of every key, after replaying a partition."""

    offsets: dict[str, dict[tuple[str, int], OffsetEntry]]
    groups: dict[str, StoredGroup]
    # group -> producer id -> offsets of a transaction without its marker yet.
    pending_txn: dict[str, dict[int, dict[tuple[str, int], OffsetEntry]]] = field(
        default_factory=dict
    )

    def restore_groups(self) -> dict[str, Group]:
        """Groups as the coordinator left them: Stable if they had members, else Empty."""
        restored: dict[str, Group] = {}
        for group_id in set(self.groups) | set(self.offsets) | set(self.pending_txn):
            stored = self.groups.get(group_id)
            offsets = self.offsets.get(group_id) or {}
            pending = self.pending_txn.get(group_id) or {}
            if stored is None and not offsets and not pending:
                continue
            group = Group(group_id)
            group.offsets = offsets
            group.pending_txn_offsets = pending
            if stored is not None:
                _restore_metadata(group, stored)
            restored[group_id] = group
        return restored


def _restore_metadata(group: Group, stored: StoredGroup) -> None:
    group.generation = stored.generation
    group.protocol_type = stored.protocol_type
    group.protocol_name = stored.protocol_name
    group.state_timestamp = stored.state_timestamp
    protocol = stored.protocol_name
    for sm in stored.members:
        # Only the chosen protocol's metadata is stored (as Kafka does); a
        # member rejoining with its full list triggers an ordinary rebalance.
        group.add(
            Member(
                sm.member_id,
                sm.instance_id,
                sm.client_id,
                sm.client_host,
                sm.session_timeout_ms,
                sm.rebalance_timeout_ms,
                stored.protocol_type or "",
                [(protocol, sm.metadata)] if protocol else [],
                assignment=sm.assignment,
            )
        )
    if stored.leader in group.members:
        group.leader = stored.leader
    if group.members:
        # Loading is not a state transition: the group resumes where it was.
        group.state = GroupState.STABLE


class OffsetsTopic:
    """Writes and replays `__consumer_offsets` through the broker's partitions."""

    def __init__(self, broker: ClusterView) -> None:
        self.broker = broker
        self.partitions = 0

    def ensure(self) -> None:
        record = self.broker.topic(OFFSETS_TOPIC)
        if record is None:
            record = self.broker.create_topic(
                OFFSETS_TOPIC,
                self.broker.config.int("offsets.topic.num.partitions"),
                1,
                OFFSETS_TOPIC_CONFIGS,
                internal=True,
            )
        # An existing topic keeps its partition count even if the setting
        # changed since: moving groups between partitions would lose them.
        self.partitions = record.partitions

    def partition_for(self, group_id: str) -> int:
        return partition_for(group_id, self.partitions)

    def write(
        self, group_id: str, records: Iterable[Record], producer: tuple[int, int] | None = None
    ) -> None:
        """Append records in one batch to the group's partition; raises on failure
        (NotCoordinatorError when this broker does not lead that partition).

        `producer` (id, epoch): a TxnOffsetCommit's records, in a transactional batch
        of that producer's, so the transaction's marker ends them as it ends its data.
        """
        batch_records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = [
            (key, value, []) for key, value in records
        ]
        if not batch_records:
            return
        if not self.partitions:
            raise NotCoordinatorError(f"the partition count of {OFFSETS_TOPIC} is not known yet")
        index = self.partition_for(group_id)
        partition = self.broker.partition(OFFSETS_TOPIC, index)
        if partition is None:
            raise RuntimeError(f"{OFFSETS_TOPIC} partition for group {group_id!r} is missing")
        if partition.leader != self.broker.node_id:
            raise NotCoordinatorError(
                f"{OFFSETS_TOPIC}-{index} is led by node {partition.leader},"
                f" not this one ({self.broker.node_id})"
            )
        if producer is None:
            partition.append_records(build_batch(batch_records))
        else:
            partition.append_records(
                build_batch(
                    batch_records,
                    producer_id=producer[0],
                    producer_epoch=producer[1],
                    attributes=ATTR_TRANSACTIONAL,
                )
            )

    def load_partition(self, index: int) -> LoadedState | None:
        """Replay one partition; None if this broker does not host it."""
        partition = self.broker.partition(OFFSETS_TOPIC, index)
        if partition is None:
            return None
        state = LoadedState({}, {})
        # Transactional offset records by producer, until their marker says commit or abort.
        open_txns: dict[int, list[_Replayed]] = {}
        for _base, raw in partition.batches():
            header = parse_header(raw)
            if header.is_control:
                pending = open_txns.pop(header.producer_id, [])
                if marker_type(raw) == CONTROL_COMMIT:
                    self._replay(state, index, pending)
                continue
            records: list[_Replayed] = [(r.key, r.value) for r in decode_records(raw)]
            if header.is_transactional:
                open_txns.setdefault(header.producer_id, []).extend(records)
            else:
                self._replay(state, index, records)
        for producer_id, pending in open_txns.items():
            txn_state = LoadedState({}, {})
            self._replay(txn_state, index, pending)
            for group_id, offsets in txn_state.offsets.items():
                state.pending_txn.setdefault(group_id, {})[producer_id] = offsets
        return state

    @staticmethod
    def _replay(state: LoadedState, index: int, records: Iterable[_Replayed]) -> None:
        for key, value in records:
            try:
                _apply(state, key, value)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("skipping unreadable %s-%d record: %s", OFFSETS_TOPIC, index, exc)


def _apply(state: LoadedState, key: bytes | None, value: bytes | None) -> None:
    if key is None:
        raise ValueError("record without a key")
    parsed = json.loads(key)
    if parsed[0] == "o":
        _, group_id, topic, partition = parsed
        offsets = state.offsets.setdefault(group_id, {})
        if value is None:
            offsets.pop((topic, int(partition)), None)
        else:
            offsets[(topic, int(partition))] = decode_offset_value(value)
    elif parsed[0] == "g":
        group_id = parsed[1]
        if value is None:
            state.groups.pop(group_id, None)
        else:
            state.groups[group_id] = decode_group_value(value)
    else:
        raise ValueError(f"unknown key type {parsed[0]!r}")
