"""The broker's lasting identities: its cluster id and the producer ids it hands out.

Both live in small files in the data directory, written by replace-rename so a
crash leaves the old file or the new one, never half of either.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

__all__ = ["MAX_NODE_IDS", "ProducerIds", "load_cluster_id"]

# The node ids a cluster may use: they interleave the producer ids brokers hand out.
MAX_NODE_IDS = 1024
_BLOCK = 1000


def load_cluster_id(
    data_dir: Path, node_id: int, voters: Mapping[int, tuple[str, int]] | None
) -> str:
    """meta.properties' cluster.id, written on first start."""
    path = data_dir / "meta.properties"
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1]
    if voters is not None:
        # Every member of a quorum must agree on the id without a format step
        # (Kafka's kafka-storage format): derive it from the voter set.
        members = ",".join(f"{n}@{h}:{p}" for n, (h, p) in sorted(voters.items()))
        seed = uuid.uuid5(uuid.NAMESPACE_URL, f"kops-quorum:{members}")
    else:
        seed = uuid.uuid4()
    cluster_id = base64.urlsafe_b64encode(seed.bytes).decode().rstrip("=")
    path.write_text(f"version=1\ncluster.id={cluster_id}\nnode.id={node_id}\n")
    return cluster_id


class ProducerIds:
    """InitProducerId's ids, never handed out twice, even across crashes.

    Reserving ids in blocks keeps allocation off the disk; a crash skips the
    rest of a block, which only wastes ids, never reuses one. In a cluster
    every broker hands out ids, each its own residue modulo MAX_NODE_IDS, so no
    two producers anywhere share one (Kafka asks the controller for blocks).
    """

    def __init__(self, data_dir: Path, node_id: int, *, clustered: bool) -> None:
        self._path = data_dir / "producer-id-block"
        self._stride, self._residue = (MAX_NODE_IDS, node_id) if clustered else (1, 0)
        start = int(self._path.read_text()) if self._path.exists() else 0
        self._next = self._ceiling = start
        self._reserve()

    def _reserve(self) -> None:
        ceiling = self._next + _BLOCK
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(str(ceiling))
        os.replace(tmp, self._path)
        self._ceiling = ceiling

    def allocate(self) -> int:
        if self._next >= self._ceiling:
            self._reserve()
        counter = self._next
        self._next += 1
        return counter * self._stride + self._residue
