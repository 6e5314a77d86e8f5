"""Rate pacing: at most N records per second, evenly spaced (no bursts).

The one pacer behind every ``--rate``/``throughput`` option of the recipes (bench produce,
backlog fan-out, topic replay, DLQ replay). Record i may leave at ``start + i / rate``, so N
records take at least ``(N - 1) / rate`` seconds; the clock starts at the first record.

How to wait is up to the caller: ``time.sleep`` by default, ``stop.wait`` to return early on
shutdown, or a producer's ``poll`` so delivery callbacks keep running while it waits::

    pacer = Pacer(rate, wait=producer.poll, stop=stop)
    for record in records:
        pacer.pace()
        producer.produce(...)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Pacer"]


class Pacer:
    """``rate`` records per second at most; None (or 0) means no limit."""

    def __init__(
        self,
        rate: float | None,
        *,
        wait: Callable[[float], object] | None = None,
        stop: threading.Event | None = None,
        slice_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate is not None and rate < 0:
            raise ValueError("the rate must not be negative")
        self.interval = 1.0 / rate if rate else 0.0
        self.stop = stop
        # Without a stop event a plain sleep never needs waking; otherwise wait in slices.
        self._wait = wait or (stop.wait if stop is not None else time.sleep)
        self._slice = slice_s if (wait is not None or stop is None) else None
        self._clock = clock
        self.start: float | None = None
        #: Records let through so far.
        self.count = 0

    @property
    def limited(self) -> bool:
        return self.interval > 0

    def due(self) -> float:
        """When the next record may leave (clock time)."""
        if self.start is None:
            return self._clock()
        return self.start + self.count * self.interval

    def pace(self) -> None:
        """Return once the next record is due (or ``stop`` is set), and count it."""
        now = self._clock()
        if self.start is None:
            self.start = now
        if self.interval:
            due = self.start + self.count * self.interval
            while now < due and not (self.stop is not None and self.stop.is_set()):
                left = due - now
                self._wait(left if self._slice is None else min(left, self._slice))
                now = self._clock()
        self.count += 1
