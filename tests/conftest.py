"""Shared test helpers. The `kafka_broker` fixture comes from kops's own pytest plugin."""

from __future__ import annotations

import os
import uuid

import pytest

# CLI output is checked by text; give rich a wide terminal in every worker and
# subprocess so table headers are never cut to fit 80 columns.
os.environ["COLUMNS"] = "200"


@pytest.fixture
def topic_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"
