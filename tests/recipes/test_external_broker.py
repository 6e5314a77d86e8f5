"""KOPS_TEST_BOOTSTRAP points the kafka_broker fixture at an existing cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from kops.pytest_plugin import EXTERNAL_BOOTSTRAP_ENV

INNER = """
from kops.pytest_plugin import requires_bundled_broker

def test_uses_the_external_cluster(kafka_broker):
    from kops import admin
    assert kafka_broker == "{bootstrap}"
    admin.create_topic(kafka_broker, "{topic}", 1)

def test_fresh_broker_is_skipped(fresh_kafka_broker):
    raise AssertionError("fresh_kafka_broker must skip with KOPS_TEST_BOOTSTRAP set")

@requires_bundled_broker
def test_bundled_only():
    raise AssertionError("requires_bundled_broker must skip with KOPS_TEST_BOOTSTRAP set")
"""


def test_fixture_yields_the_external_cluster_and_skips_bundled_only_tests(
    kafka_broker: str, tmp_path: Path
) -> None:
    # A fresh topic name: with the outer suite itself on an external cluster, a fixed
    # name would already exist on the second run.
    inner = INNER.format(bootstrap=kafka_broker, topic=f"external-check-{uuid.uuid4().hex[:8]}")
    (tmp_path / "test_inner.py").write_text(inner)
    env = {**os.environ, EXTERNAL_BOOTSTRAP_ENV: kafka_broker}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", "-rs"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 2 skipped" in result.stdout, result.stdout
    assert f"{EXTERNAL_BOOTSTRAP_ENV} is set" in result.stdout
