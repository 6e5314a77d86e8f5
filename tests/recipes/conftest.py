"""Fixtures of the recipe tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kops.testing import BrokerProcess, run_broker
from tests.recipes.broker_kills import killable_broker


@pytest.fixture
def no_transactions_broker(tmp_path: Path) -> Iterator[str]:
    """A broker that refuses transactional producers, as a cluster whose ACLs deny them."""
    with run_broker(tmp_path / "broker", config={"kops.transactions.enable": "false"}) as b:
        yield b


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker in a child process of this test's own, to SIGKILL and restart (same port and
    data directory); its stderr in ``broker.log`` (see tests.recipes.broker_kills)."""
    with killable_broker(tmp_path) as broker:
        yield broker
