"""A tiny durable store for the quorum state (Kafka's ``quorum-state`` file).

The driver calls ``write`` for every ``PersistQuorumState`` action and must not
perform the actions after it (notably a Vote response) until it returns. The
write is atomic and durable (``write_atomic``: a temporary file, fsync, rename
over the old file, fsync the directory). This module does file IO; the core
does not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kops.broker.cluster.raft.state import QuorumStateData
from kops.broker.log.checkpoint import write_atomic

FILE_NAME = "quorum-state"
DATA_VERSION = 0


class FileQuorumStateStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME

    def read(self) -> QuorumStateData | None:
        """The last written state, or None if nothing was ever written."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: expected a JSON object")
        return QuorumStateData.from_json(data)

    def write(self, state: QuorumStateData) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        body = {"data_version": DATA_VERSION, **state.to_json()}
        write_atomic(self.path, json.dumps(body, sort_keys=True) + "\n")
