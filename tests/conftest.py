"""Shared test helpers. The `kafka_broker` fixture comes from kops's own pytest plugin."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def topic_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"
