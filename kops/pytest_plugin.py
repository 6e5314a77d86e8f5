"""pytest plugin (entry point `pytest11`): the `kafka_broker` fixture.

def test_my_consumer(kafka_broker):
    consumer = Consumer({"bootstrap.servers": kafka_broker, ...})
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kops.testing import run_broker


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real kops broker shared by the test session."""
    with run_broker(tmp_path_factory.mktemp("kafka-broker")) as bootstrap:
        yield bootstrap


@pytest.fixture
def fresh_kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker of the test's own, for tests that change broker-wide state."""
    with run_broker(tmp_path_factory.mktemp("kafka-broker")) as bootstrap:
        yield bootstrap
