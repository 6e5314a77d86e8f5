"""The harness the seeded property loops share: which seeds run, and how a failure replays.

Each loop (controller, replication, follower) runs a few hundred seeds in chunks,
or only the seed named by its environment variable, traced. A failure keeps the
run's last trace lines and a one-command replay on the exception and prints the
``VAR=N`` line, so a red CI log says what to type.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator


def seeds(env_var: str, count: int) -> list[int]:
    """Every seed below `count`, or only the one `env_var` names."""
    replay = os.environ.get(env_var)
    return [int(replay)] if replay else list(range(count))


def chunked(env_var: str, count: int, size: int) -> list[list[int]]:
    """The seeds in chunks of `size`: one pytest case each, so xdist can share them."""
    every = seeds(env_var, count)
    return [every[i : i + size] for i in range(0, len(every), size)]


@contextlib.contextmanager
def reproducible(
    env_var: str, seed: int, where: str, trace: Callable[[], list[str]], lines: int = 25
) -> Iterator[None]:
    """Annotate a failure inside with the trace's tail and how to replay `seed`."""
    try:
        yield
    except BaseException as exc:
        exc.add_note("\n".join(trace()[-lines:]))
        exc.add_note(f"replay: {env_var}={seed} .venv/bin/pytest -p no:xdist -s {where}")
        print(f"{env_var}={seed}")
        raise
