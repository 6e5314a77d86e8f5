"""Helpers for CLI tests: run the real ``kops`` entry point in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest

Kops = Callable[..., subprocess.CompletedProcess[str]]


def run_kops(
    *args: str,
    bootstrap: str | None = None,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``python -m kops ARGS`` with KOPS_BOOTSTRAP set; never raises on a non-zero exit."""
    full_env = {k: v for k, v in os.environ.items() if k != "KOPS_DEBUG"}
    if bootstrap is not None:
        full_env["KOPS_BOOTSTRAP"] = bootstrap
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "kops", *args],
        input=input,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


@pytest.fixture(name="run_kops")
def run_kops_fixture() -> Kops:
    """Run the kops CLI with no broker chosen (pass bootstrap=... yourself)."""
    return run_kops


@pytest.fixture
def kops(kafka_broker: str) -> Kops:
    """Run the kops CLI against the test broker."""

    def run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("bootstrap", kafka_broker)
        return run_kops(*args, **kwargs)  # type: ignore[arg-type]

    return run


@pytest.fixture
def topic() -> str:
    """A fresh topic name (not created)."""
    return f"cli-{uuid.uuid4().hex[:10]}"
