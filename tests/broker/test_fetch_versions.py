"""Fetch across the versions the broker advertises, with a hand-made client."""

from __future__ import annotations

from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from tests.broker.clients import create_topic, fetch_request, produce
from tests.broker.groups.group_helpers import send_once


def _fetch(bootstrap: str, version: int, topic: str, max_wait_ms: int = 100) -> Any:
    """Fetch partition 0 of `topic` from offset 0 with Fetch `version`."""
    return send_once(bootstrap, fetch_request(topic, version, max_wait_ms=max_wait_ms))


@pytest.mark.parametrize("version", [4, 8, 9, 11, 12])
def test_fetch_every_served_version(kafka_broker: str, topic_name: str, version: int) -> None:
    # v4-v8 have no current_leader_epoch; v9+ do (and -1 skips the check); v12 is
    # flexible and adds last_fetched_epoch and cluster_id.
    create_topic(kafka_broker, topic_name, 1)
    produce(kafka_broker, topic_name, [(b"k", b"v", None, 0)] * 3)
    response = _fetch(kafka_broker, version, topic_name)
    [data] = response.responses[0].partitions
    assert data.error_code == ErrorCode.none
    assert data.high_watermark == 3
    assert data.records


def test_the_metadata_log_is_not_for_clients(kafka_broker: str) -> None:
    # A single broker has no controller quorum and so no __cluster_metadata.
    response = _fetch(kafka_broker, 12, "__cluster_metadata", max_wait_ms=0)
    assert response.error_code == ErrorCode.unknown_topic_or_partition
    assert response.responses == ()
