"""KOPS_TEST_BOOTSTRAP points the kafka_broker fixture at an existing cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

INNER = """
from kops.pytest_plugin import requires_bundled_broker

def test_uses_the_external_cluster(kafka_broker):
    from kops import admin
    assert kafka_broker == "{bootstrap}"
    admin.create_topic(kafka_broker, "external-check", 1)

def test_fresh_broker_is_skipped(fresh_kafka_broker):
    raise AssertionError("fresh_kafka_broker must skip with KOPS_TEST_BOOTSTRAP set")

@requires_bundled_broker
def test_bundled_only():
    raise AssertionError("requires_bundled_broker must skip with KOPS_TEST_BOOTSTRAP set")
"""


def test_fixture_yields_the_external_cluster_and_skips_bundled_only_tests(
    kafka_broker: str, tmp_path: Path
) -> None:
    (tmp_path / "test_inner.py").write_text(INNER.format(bootstrap=kafka_broker))
    env = {**os.environ, "KOPS_TEST_BOOTSTRAP": kafka_broker}
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
    assert "KOPS_TEST_BOOTSTRAP is set" in result.stdout
