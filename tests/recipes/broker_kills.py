"""A broker that a test kills with SIGKILL and restarts (same port, same data directory)
at points chosen by the progress of the recipe under test.

    with killable_broker(tmp_path) as broker:
        ...  # the recipe in a child process, under load
        kill_at_progress(broker, kills, lambda: records_in(broker.bootstrap, target), rng)
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path

from kops.testing import BrokerProcess, wait_until
from tests.recipes.streams import end_offsets

#: Transactions a dead broker left open are aborted within a second of their timeout
#: (the broker's default looks every 10 s).
CONFIG = {"transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000"}


@contextlib.contextmanager
def killable_broker(directory: Path) -> Iterator[BrokerProcess]:
    """A :class:`BrokerProcess` in ``directory/broker``, its stderr in
    ``directory/broker.log`` (read when a test fails: why a client did not resume)."""
    broker = BrokerProcess(directory / "broker", config=CONFIG)
    with (directory / "broker.log").open("w") as log_file:
        broker.stderr = log_file.fileno()
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()


def records_in(bootstrap: str, topic: str) -> int:
    """Records written to ``topic`` so far: committed, still open or aborted (the sum of
    its partitions' end offsets)."""
    return sum(end_offsets(bootstrap, topic).values())


def kill_at_progress(
    broker: BrokerProcess,
    kills: int,
    progress: Callable[[], int],
    rng: random.Random,
    *,
    step: tuple[int, int] = (5, 200),
    timeout: float = 60,
    log: Callable[[], str] = lambda: "",
) -> None:
    """``kills`` times: wait until ``progress()`` grew by a random ``step`` (the kill falls
    at a random point of a stream that is moving again: mid-round, mid-commit, between
    rounds), then SIGKILL the broker and start it again. ``log``: what a timeout shows
    (the recipe's log)."""
    for kill in range(kills):
        want = progress() + rng.randint(*step)
        wait_until(
            lambda want=want: progress() >= want,  # type: ignore[misc]
            timeout,
            message=lambda kill=kill: f"progress before broker kill {kill + 1}:\n{log()}",  # type: ignore[misc]
        )
        broker.kill()
        broker.start()  # same port and data directory
