"""pytest plugin (entry point `pytest11`): the `kafka_broker` fixture.

def test_my_consumer(kafka_broker):
    consumer = Consumer({"bootstrap.servers": kafka_broker, ...})

With ``KOPS_TEST_BOOTSTRAP=HOST:PORT`` set, ``kafka_broker`` is that cluster instead
of a bundled broker, so the same tests run against Apache Kafka, Redpanda or tansu.
Tests that need the bundled broker itself (its configs, killing or restarting it)
carry :data:`requires_bundled_broker` and are skipped then; ``fresh_kafka_broker``
is always a bundled broker of the test's own, so it skips too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from kops.testing import run_broker

EXTERNAL_BOOTSTRAP_ENV = "KOPS_TEST_BOOTSTRAP"


def external_bootstrap() -> str | None:
    """The cluster named by ``KOPS_TEST_BOOTSTRAP``, or None for the bundled broker."""
    return os.environ.get(EXTERNAL_BOOTSTRAP_ENV) or None


requires_bundled_broker = pytest.mark.skipif(
    external_bootstrap() is not None,
    reason=f"needs the bundled kops broker ({EXTERNAL_BOOTSTRAP_ENV} is set)",
)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real broker shared by the test session: a bundled kops
    broker, or the cluster named by ``KOPS_TEST_BOOTSTRAP``."""
    external = external_bootstrap()
    if external is not None:
        yield external
        return
    with run_broker(tmp_path_factory.mktemp("kafka-broker")) as bootstrap:
        yield bootstrap


@pytest.fixture
def fresh_kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bundled broker of the test's own, for tests that change broker-wide state."""
    if external_bootstrap() is not None:
        pytest.skip(f"needs a bundled broker of its own ({EXTERNAL_BOOTSTRAP_ENV} is set)")
    with run_broker(tmp_path_factory.mktemp("kafka-broker")) as bootstrap:
        yield bootstrap
