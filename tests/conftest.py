"""Shared test helpers. The `kafka_broker` fixture comes from kops's own pytest plugin."""

from __future__ import annotations

import faulthandler
import os
import uuid
from collections.abc import Iterator

import pytest

# CLI output is checked by text; give rich a wide terminal in every worker and
# subprocess so table headers are never cut to fit 80 columns.
os.environ["COLUMNS"] = "200"


@pytest.fixture
def topic_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def _watchdog_without_the_gil(request: pytest.FixtureRequest) -> Iterator[None]:
    """The last resort after pytest-timeout: a test frozen with the GIL held (a C call
    that never returns, as confluent-kafka's close() once did) stops every Python
    thread, pytest-timeout's too. faulthandler's watchdog is a C thread: a minute past
    the test's timeout it dumps every stack and ends the worker, which xdist reports
    as a crash naming the test, instead of the run hanging until CI gives up."""
    marker = request.node.get_closest_marker("timeout")
    limit = (
        float(marker.args[0])
        if marker and marker.args
        else float(request.config.getini("timeout") or 120)
    )
    faulthandler.dump_traceback_later(limit + 60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
