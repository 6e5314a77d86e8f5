"""Transactional ids' state in the internal topic `__transaction_state`.

Placement is Kafka's: a transactional id lives in partition
`abs(javaStringHashCode(id)) % transaction.state.log.num.partitions`, as a group
does in `__consumer_offsets`, so the coordinator of an id is the leader of that
partition. The topic is compacted: only the latest value of each id must survive.

Record encoding (kops's own, compact UTF-8 JSON like the offsets topic's):

    key    ["t", transactional_id]
    value  {"v": 1, "pid": producer_id, "e": epoch, "to": timeout_ms, "s": state,
            "p": [[topic, partition], ...], "st": start_ms, "ut": update_ms}

A null value is a tombstone (the id expired).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kops.broker.groups.storage import NotCoordinatorError, partition_for
from kops.broker.txn.state import TxnMetadata, TxnState
from kops.protocol.batch import build_batch, decode_records

if TYPE_CHECKING:
    from kops.broker.cluster.view import ClusterView

__all__ = ["TRANSACTION_STATE_TOPIC", "TXN_STATE_TOPIC_CONFIGS", "TransactionLog"]

log = logging.getLogger("kops.broker.txn")

TRANSACTION_STATE_TOPIC = "__transaction_state"
FORMAT_VERSION = 1
# Kafka's transaction.state.log.segment.bytes.
TXN_STATE_TOPIC_CONFIGS: Mapping[str, str] = {
    "cleanup.policy": "compact",
    "segment.bytes": str(100 * 1024 * 1024),
}


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def txn_key(transactional_id: str) -> bytes:
    return _json(["t", transactional_id])


def txn_value(meta: TxnMetadata) -> bytes:
    return _json(
        {
            "v": FORMAT_VERSION,
            "pid": meta.producer_id,
            "e": meta.producer_epoch,
            "to": meta.timeout_ms,
            "s": meta.state.value,
            "p": sorted([t, p] for t, p in meta.partitions),
            "st": meta.start_ms,
            "ut": meta.update_ms,
        }
    )


def decode_txn(transactional_id: str, data: bytes) -> TxnMetadata:
    raw = json.loads(data)
    return TxnMetadata(
        transactional_id,
        int(raw["pid"]),
        int(raw["e"]),
        int(raw["to"]),
        TxnState(raw["s"]),
        frozenset((str(t), int(p)) for t, p in raw.get("p", [])),
        int(raw.get("st", -1)),
        int(raw.get("ut", -1)),
    )


class TransactionLog:
    """Writes and replays `__transaction_state` through the broker's partitions."""

    def __init__(self, broker: ClusterView) -> None:
        self.broker = broker
        self.partitions = 0

    def exists(self) -> bool:
        record = self.broker.topic(TRANSACTION_STATE_TOPIC)
        if record is not None:
            self.partitions = record.partitions
        return record is not None

    def ensure(self) -> None:
        """A single broker: create the topic on first use (as Kafka does)."""
        if self.exists():
            return
        record = self.broker.create_topic(
            TRANSACTION_STATE_TOPIC,
            self.broker.config.int("transaction.state.log.num.partitions"),
            1,
            TXN_STATE_TOPIC_CONFIGS,
            internal=True,
        )
        self.partitions = record.partitions

    def partition_for(self, transactional_id: str) -> int:
        return partition_for(transactional_id, self.partitions)

    def write(self, meta: TxnMetadata) -> int:
        """Append the id's new state; returns the partition it went to. Raises on failure
        (NotCoordinatorError when this broker does not lead that partition)."""
        if not self.partitions:
            raise NotCoordinatorError(f"{TRANSACTION_STATE_TOPIC} does not exist yet")
        index = self.partition_for(meta.transactional_id)
        partition = self.broker.partition(TRANSACTION_STATE_TOPIC, index)
        if partition is None or partition.leader != self.broker.node_id:
            raise NotCoordinatorError(
                f"{TRANSACTION_STATE_TOPIC}-{index} is not led by this broker"
            )
        partition.append_records(
            build_batch([(txn_key(meta.transactional_id), txn_value(meta), [])])
        )
        return index

    def load_partition(self, index: int) -> dict[str, TxnMetadata]:
        """The latest state of every id in one partition (none if it is not hosted here)."""
        partition = self.broker.partition(TRANSACTION_STATE_TOPIC, index)
        found: dict[str, TxnMetadata] = {}
        if partition is None:
            return found
        for _base, raw in partition.batches():
            for record in decode_records(raw):
                try:
                    key = json.loads(record.key or b"")
                    if key[0] != "t":
                        raise ValueError(f"unknown key type {key[0]!r}")
                    if record.value is None:
                        found.pop(key[1], None)
                    else:
                        found[key[1]] = decode_txn(key[1], record.value)
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    log.warning(
                        "skipping unreadable %s-%d record at %d: %s",
                        TRANSACTION_STATE_TOPIC,
                        index,
                        record.offset,
                        exc,
                    )
        return found
