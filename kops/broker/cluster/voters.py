"""``controller.quorum.voters``: who votes in the controller quorum, and where.

Apart from the quorum driver so a broker can check its settings (and the CLI
name a mistake) without loading the Raft stack.
"""

from __future__ import annotations

__all__ = ["METADATA_LOG_DIR", "QuorumError", "parse_voters"]

#: Where a broker keeps the quorum's log, snapshots and quorum-state, as Kafka names it.
METADATA_LOG_DIR = "__cluster_metadata-0"


class QuorumError(ValueError):
    """A malformed ``controller.quorum.voters`` or node id."""


def parse_voters(text: str) -> dict[int, tuple[str, int]]:
    """Kafka's ``controller.quorum.voters``: ``1@host:9092,2@host:9093,...``."""
    voters: dict[int, tuple[str, int]] = {}
    for item in (part.strip() for part in text.split(",")):
        node, at, address = item.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and node.isdigit() and host and port.isdigit()):
            raise QuorumError(f"expected ID@HOST:PORT in controller.quorum.voters, got {item!r}")
        if int(node) in voters:
            raise QuorumError(f"voter {node} is listed twice in controller.quorum.voters")
        voters[int(node)] = (host.strip("[]"), int(port))
    return voters
