"""The retry wrapper's decisions, without a broker: a fake producer records what it sends."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from kops.consume import ConsumedRecord
from kops.recipes import headers as h
from kops.recipes.delay import DelayTiers
from kops.recipes.dlq import DeadLetter
from kops.recipes.retry import (
    DeserializationError,
    FatalError,
    Outcome,
    RetryingHandler,
    RetryPolicy,
    import_object,
)

TIERS = DelayTiers.parse("1s,2s", template="t.delay.{tier}")


class FakeMessage:
    def __init__(self, topic="orders", partition=0, offset=7, key=b"k", value=b"v", headers=None):
        self._t, self._p, self._o = topic, partition, offset
        self._k, self._v, self._h = key, value, headers

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes | None:
        return self._v

    def headers(self) -> Any:
        return self._h


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, **kw):
        self.sent.append({"topic": topic, "value": value, "key": key, "headers": headers or []})

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def list_topics(self, topic: str | None = None, timeout: float = 0) -> Any:
        # send_delayed checks that the target exists (kops.recipes.delay.tiers): every
        # topic exists for this in-memory producer.
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None)} if topic else {})


def redeliver(sent: dict[str, Any], offset: int = 50) -> FakeMessage:
    """What the delay forwarder hands back to the source topic when the retry is due."""
    return FakeMessage(
        topic=h.get(sent["headers"], h.DELAY_TARGET) or "?",
        offset=offset,
        key=sent["key"],
        value=sent["value"],
        headers=sent["headers"],
    )


def wrapper(handler, **policy: Any) -> tuple[RetryingHandler, FakeProducer]:
    producer = FakeProducer()
    pol = RetryPolicy(**{"ladder": (1.0, 2.0), "backoff": 0, **policy})
    return RetryingHandler(handler, producer, group="g1", policy=pol, tiers=TIERS), producer


def failing(exc: Exception):
    calls = []

    def handler(msg):
        calls.append(msg)
        raise exc

    return handler, calls


def test_success_sends_nothing():
    w, producer = wrapper(lambda m: None)
    assert w(FakeMessage()) is Outcome.HANDLED
    assert producer.sent == [] and w.stats.handled == 1


def test_in_process_retries_then_success():
    attempts = []

    def flaky(msg):
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("db down")

    w, producer = wrapper(flaky, attempts=3)
    assert w(FakeMessage()) is Outcome.HANDLED
    assert len(attempts) == 3 and producer.sent == []


def test_ladder_order_attempt_headers_then_dlq():
    handler, calls = failing(TimeoutError("payment service timed out"))
    w, producer = wrapper(handler, attempts=2)
    msg = FakeMessage(headers=[("trace", b"abc")])

    assert w(msg) is Outcome.RETRY_SCHEDULED
    first = producer.sent[-1]
    assert first["topic"] == "t.delay.1s"
    assert h.get(first["headers"], h.RETRY_ATTEMPT) == "1"
    assert h.get(first["headers"], h.DELAY_TARGET) == "orders"
    assert h.get(first["headers"], h.RETRY_GROUP) == "g1"
    assert h.get(first["headers"], h.RETRY_ORIGINAL_OFFSET) == "7"
    assert h.get(first["headers"], "trace") == "abc"
    assert first["key"] == b"k" and first["value"] == b"v"

    assert w(redeliver(first, 50)) is Outcome.RETRY_SCHEDULED
    second = producer.sent[-1]
    assert second["topic"] == "t.delay.2s"
    assert h.get(second["headers"], h.RETRY_ATTEMPT) == "2"
    # The first failure time and the origin survive the tiers.
    assert h.get(second["headers"], h.RETRY_FIRST_FAILURE_MS) == h.get(
        first["headers"], h.RETRY_FIRST_FAILURE_MS
    )
    assert h.get(second["headers"], h.RETRY_ORIGINAL_OFFSET) == "7"
    assert h.get(second["headers"], h.MESSAGE_ID) != h.get(first["headers"], h.MESSAGE_ID)

    assert w(redeliver(second, 60)) is Outcome.DEAD_LETTERED
    dead = producer.sent[-1]
    assert dead["topic"] == "orders.dlq"
    dl = DeadLetter.from_record(
        ConsumedRecord("orders.dlq", 0, 0, 1, "create_time", dead["key"], dead["value"],
                       dead["headers"])
    )  # fmt: skip
    assert (dl.original_topic, dl.original_partition, dl.original_offset) == ("orders", 0, 7)
    assert dl.attempts == 3 and dl.reason == "retries-exhausted"
    assert dl.exception_class == "TimeoutError"
    assert "payment service timed out" in (dl.stacktrace or "")
    assert not any(k.startswith(("kops.retry.", "kops.delay.")) for k, _ in dead["headers"])
    assert h.get(dead["headers"], "trace") == "abc"
    assert len(calls) == 2 * 3  # 2 in-process calls per delivery, 3 deliveries
    assert w.stats.to_dict()["by_attempt"] == {1: 1, 2: 1}


@pytest.mark.parametrize(
    "exc",
    [FatalError("bad"), DeserializationError("x"), json.JSONDecodeError("no", "doc", 0)],
)
def test_fatal_skips_all_retries(exc):
    handler, calls = failing(exc)
    w, producer = wrapper(handler, attempts=5)
    assert w(FakeMessage()) is Outcome.DEAD_LETTERED
    assert len(calls) == 1
    assert [s["topic"] for s in producer.sent] == ["orders.dlq"]
    assert h.get(producer.sent[0]["headers"], h.DLQ_REASON) == "fatal"
    assert h.get(producer.sent[0]["headers"], h.DLQ_ATTEMPTS) == "1"


def test_fatal_found_in_cause_chain():
    def handler(msg):
        try:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad byte")
        except UnicodeDecodeError as inner:
            raise RuntimeError("could not parse order") from inner

    w, producer = wrapper(handler)
    assert w(FakeMessage()) is Outcome.DEAD_LETTERED
    assert h.get(producer.sent[0]["headers"], h.DLQ_EXCEPTION_CLASS) == "RuntimeError"


def test_non_retryable_goes_straight_to_dlq():
    handler, calls = failing(KeyError("sku"))
    w, producer = wrapper(handler, retryable=(ConnectionError,), attempts=4)
    assert w(FakeMessage()) is Outcome.DEAD_LETTERED
    assert len(calls) == 1
    assert h.get(producer.sent[0]["headers"], h.DLQ_REASON) == "non-retryable"


def test_retry_budget():
    handler, _ = failing(ConnectionError("x"))
    w, producer = wrapper(handler, attempts=1, max_total=1.5)
    assert w(FakeMessage()) is Outcome.RETRY_SCHEDULED  # 0 s spent + 1 s tier <= 1.5 s
    # Next tier (2 s) would take the record past the 1.5 s budget.
    assert w(redeliver(producer.sent[-1])) is Outcome.DEAD_LETTERED
    assert h.get(producer.sent[-1]["headers"], h.DLQ_REASON) == "retry-budget"


def test_retry_topic_and_custom_dlq():
    handler, _ = failing(ConnectionError("x"))
    w, producer = wrapper(
        handler, attempts=1, retry_topic="{topic}.retry", dlq_topic="dead.{topic}"
    )
    w(FakeMessage())
    assert h.get(producer.sent[-1]["headers"], h.DELAY_TARGET) == "orders.retry"
    # Back from the retry topic, the record is still dead-lettered as an "orders" record.
    back = redeliver(producer.sent[-1])
    w(back)
    w(redeliver(producer.sent[-1]))
    assert producer.sent[-1]["topic"] == "dead.orders"
    assert h.get(producer.sent[-1]["headers"], h.DLQ_ORIGINAL_TOPIC) == "orders"


def test_retries_for_another_group_are_skipped():
    handler, calls = failing(ConnectionError("x"))
    w, producer = wrapper(handler)
    other = FakeMessage(headers=[(h.RETRY_GROUP, b"g2"), (h.RETRY_ATTEMPT, b"1")])
    assert w(other) is Outcome.SKIPPED
    assert calls == [] and producer.sent == []


def test_empty_ladder_means_dlq_after_in_process_retries():
    handler, calls = failing(ConnectionError("x"))
    w, _producer = wrapper(handler, ladder=(), attempts=3)
    assert w(FakeMessage()) is Outcome.DEAD_LETTERED
    assert len(calls) == 3


def test_policy_from_recipe_table():
    p = RetryPolicy.from_dict(
        {
            "attempts": 4,
            "backoff": "100ms",
            "ladder": "1s, 10s, 1m",
            "fatal": ["json:JSONDecodeError", "kops.recipes.retry:FatalError"],
            "retryable": "ConnectionError",
            "max_total": "1h",
            "retry_topic": "",
        }
    )
    assert p.ladder == (1.0, 10.0, 60.0) and p.backoff == 0.1 and p.max_total == 3600
    assert p.fatal == (json.JSONDecodeError, FatalError)
    assert p.retryable == (ConnectionError,) and p.retry_topic is None
    with pytest.raises(ValueError, match="unknown retry settings"):
        RetryPolicy.from_dict({"atempts": 3})
    with pytest.raises(ValueError, match="not an exception"):
        RetryPolicy.from_dict({"fatal": ["json:loads"]})
    assert import_object("json.loads") is json.loads


def test_one_loader_for_module_attr_paths():
    from kops.recipes.loader import import_object as loader
    from kops.worker.jobs.call import load_callable
    from kops.worker.registry import RecipeError

    assert loader is import_object  # retry, the worker jobs and the registry share it
    assert loader("json:loads") is json.loads and loader("ValueError") is ValueError
    assert loader("json:JSONDecoder.decode") is json.JSONDecoder.decode
    with pytest.raises(ValueError, match=r"package\.module:name"):
        loader("nonsense")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        loader("json:nope")
    with pytest.raises(ImportError):
        loader("no_such_module_xyz:f")
    assert load_callable("json:dumps", "handler") is json.dumps
    with pytest.raises(RecipeError, match=r"handler: cannot load 'json:nope'"):
        load_callable("json:nope", "handler")
    with pytest.raises(RecipeError, match="is not callable"):
        load_callable("json:__doc__", "handler")


def test_flush_raises_when_a_retry_was_not_delivered():
    class Err:
        def str(self) -> str:
            return "Broker: Unknown topic or partition"

    class Msg:
        def topic(self) -> str:
            return "orders.dlq"

    class FailingProducer(FakeProducer):
        def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, **kw):
            super().produce(topic, value, key, headers, on_delivery)
            self.callback = on_delivery

        def flush(self, timeout: float = 0) -> int:
            self.callback(Err(), Msg())
            return 0

    producer = FailingProducer()
    w = RetryingHandler(failing(FatalError("x"))[0], producer, group="g", tiers=TIERS)
    assert w(FakeMessage()) is Outcome.DEAD_LETTERED
    with pytest.raises(Exception, match=r"could not send a retry or dead letter: orders\.dlq"):
        w.flush()
