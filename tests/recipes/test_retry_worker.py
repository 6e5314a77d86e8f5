"""The retry-consumer and dlq-replay job kinds, in the worker, against the bundled broker."""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from pathlib import Path

import pytest

from kops.admin import create_topic, describe_topic
from kops.client import ClientSettings, UnknownTopic
from kops.consume import StartAt, consume
from kops.recipes import headers as h
from kops.testing import wait_until
from kops.worker import RecipeError, Worker, load_recipes, parse_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_recipe_builds() -> None:
    # Building every job checks options, imports the handler and exception classes.
    worker = Worker.from_recipes(
        load_recipes([ROOT / "recipes" / "orders-retry-dlq.toml"]), ClientSettings("127.0.0.1:1")
    )
    kinds = {s.spec.name: (s.spec.kind, s.spec.schedule.describe()) for s in worker.jobs}
    assert kinds == {
        "orders-billing": ("retry-consumer", "long-running"),
        "orders-dlq-replay": ("dlq-replay", "cron 0 3 * * * (UTC)"),
    }
    policy = worker.jobs[0].instance.kwargs["policy"]
    assert policy.ladder == (1.0, 10.0, 60.0, 600.0) and policy.max_total == 3600
    assert policy.fatal[0].__name__ == "InvalidOrder"


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"kind": "retry-consumer", "topics": "t", "group": "g"}, "missing option handler"),
        ({"kind": "retry-consumer", "topics": "t", "group": "g", "handler": "json:nope"}, "nope"),
        (
            {
                "kind": "retry-consumer",
                "topics": "t",
                "group": "g",
                "handler": "json:loads",
                "retry": {"atempts": 2},
            },
            "unknown retry settings: atempts",
        ),
        ({"kind": "dlq-replay", "topic": "x.dlq"}, "periodic"),
        ({"kind": "dlq-replay", "topic": "x.dlq", "every": "1h", "since": "soon"}, "since"),
    ],
)
def test_bad_options_fail_at_load(job: dict, message: str) -> None:
    recipe = parse_recipe({"job": [job]})
    with pytest.raises(RecipeError, match=message):
        Worker.from_recipes([recipe], ClientSettings("127.0.0.1:1"))


def test_worker_runs_retry_consumer_and_replay(kafka_broker: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    orders = f"orders-{tag}"
    create_topic(kafka_broker, orders, partitions=2)
    recipe = tmp_path / "orders.toml"
    recipe.write_text(
        f"""
[[job]]
name = "fwd"
kind = "delay-forwarders"
tiers = ["1s"]
template = "{tag}.delay.{{tier}}"
group = "fwd-{tag}"
cancel_topic = ""
stats_topic = ""

[[job]]
name = "billing"
kind = "retry-consumer"
topics = ["{orders}"]
group = "billing-{tag}"
handler = "retry_dlq_consumer:handle"
python_path = "{ROOT / "examples"}"
tiers = ["1s"]
template = "{tag}.delay.{{tier}}"
[job.retry]
attempts = 1
ladder = ["1s"]
fatal = ["retry_dlq_consumer:InvalidOrder", "kops.recipes.retry:FatalError"]

[[job]]
name = "replay"
kind = "dlq-replay"
every = "1h"
topic = "{orders}.dlq"
exception = "PaymentGatewayDown"
since = "1h"
rate = 0
"""
    )
    settings = ClientSettings(kafka_broker)
    worker = Worker.from_recipes(load_recipes([recipe]), settings)
    worker.start()
    try:
        sys.path.insert(0, str(ROOT / "examples"))
        from retry_dlq_consumer import seed_orders

        seed_orders(settings, orders, 10)  # 7 are charged, 3 dead-lettered

        def dead_lettered() -> int | None:
            with contextlib.suppress(UnknownTopic):  # the job creates it when it starts
                return describe_topic(kafka_broker, f"{orders}.dlq").total_records
            return None

        wait_until(
            lambda: dead_lettered() == 3,
            30,
            message=lambda: f"3 records dead-lettered (found {dead_lettered()})",
        )
        states = {s.spec.name: s for s in worker.jobs}
        # One scheduled run: the transient failure goes back to the orders topic.
        states["replay"].instance()
    finally:
        started = time.monotonic()
        worker.stop()
        assert time.monotonic() - started < 20  # stops cleanly and promptly

    assert states["billing"].restarts == 0, states["billing"].last_error
    back = [
        r
        for r in consume(kafka_broker, orders, start=StartAt.beginning(), stop_at_end=True)
        if h.get(r.headers, h.REPLAY_OF)
    ]
    assert len(back) == 1 and b"gateway_failures" in (back[0].value or b"")
    assert h.get(back[0].headers, h.RETRY_GROUP) == f"billing-{tag}"
