"""Reading topics to their end as a test's readers see them."""

from __future__ import annotations

from kops import admin
from kops.client import AdminSession, UnknownTopic
from kops.consume import ConsumedRecord, StartAt, consume


def read(bootstrap: str, topic: str, *, committed: bool = True) -> list[ConsumedRecord]:
    """Every record of ``topic``, start to end, as a read_committed (or read_uncommitted)
    reader sees it; none while it does not exist."""
    isolation = "read_committed" if committed else "read_uncommitted"
    config = {"isolation.level": isolation}
    try:
        return list(
            consume(bootstrap, topic, start=StartAt.beginning(), stop_at_end=True, config=config)
        )
    except UnknownTopic:  # the router creates its topics when it starts
        return []


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    with AdminSession(bootstrap) as session:
        parts = session.metadata(topic).topics[topic].partitions
        _starts, ends = admin.watermarks(session, [(topic, p) for p in parts])
    return {p: off for (_t, p), off in ends.items()}
