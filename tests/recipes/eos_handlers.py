"""Handlers of the exactly-once retry tests; a child worker imports them as
``eos_handlers:by_value`` (``python_path`` = this directory).

The value says what happens: ``ok...`` is handled, ``flaky...`` fails its first delivery
only, ``retry...`` always fails (retryable), ``dead...`` is fatal (straight to the DLQ).
"""

from __future__ import annotations

import time
from collections import Counter

from confluent_kafka import Message

from kops.recipes import headers as h
from kops.recipes.retry import FatalError

#: Calls per key in this process (the in-process tests read it).
calls: Counter[bytes] = Counter()


def by_value(msg: Message) -> None:
    calls[msg.key() or b""] += 1
    # A handler's work takes time: a batch's first outputs are out well before its offsets
    # are committed, the window a kill must hit to catch a duplicate.
    time.sleep(0.01)
    value = msg.value() or b""
    if value.startswith(b"dead"):
        raise FatalError(f"{msg.key()!r} cannot be handled")
    if value.startswith(b"retry"):
        raise ValueError(f"{msg.key()!r} failed again")
    if value.startswith(b"flaky") and h.get(msg.headers(), h.RETRY_ATTEMPT) is None:
        raise ValueError(f"{msg.key()!r} failed its first delivery")
