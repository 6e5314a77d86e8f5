"""Fixtures of the recipe tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kops.testing import run_broker


@pytest.fixture
def no_transactions_broker(tmp_path: Path) -> Iterator[str]:
    """A broker that refuses transactional producers, as a cluster whose ACLs deny them."""
    with run_broker(tmp_path / "broker", config={"kops.transactions.enable": "false"}) as b:
        yield b
