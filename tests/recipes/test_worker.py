"""The worker: recipe files, the job registry, scheduling, restarts and clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.base import STATE_STOPPED

from kops.client import ClientSettings
from kops.testing import wait_until
from kops.worker import (
    JobContext,
    RecipeError,
    Worker,
    job_kinds,
    load_recipes,
    parse_recipe,
    register_job_kind,
    settings_for,
    take_options,
)

REPO = Path(__file__).resolve().parents[2]


def recipe(text: str, path: Path | None = None) -> Any:
    return parse_recipe(tomllib.loads(text), path)


# --------------------------------------------------------------------------- recipe files


def test_schedules_options_and_names() -> None:
    r = recipe(
        """
        bootstrap = "h:1"
        [client]
        "client.id" = "x"
        [[job]]
        kind = "delay-forwarders"
        tiers = ["1s", "5s"]
        [[job]]
        kind = "delay-status"
        every = "90s"
        [[job]]
        kind = "delay-status"
        cron = "30 3 * * *"
        timezone = "Europe/Paris"
        [[job]]
        name = "nightly"
        kind = "delay-status"
        schedule = "@daily"
        [[job]]
        kind = "delay-status"
        every = 5
        enabled = false
        """
    )
    assert r.bootstrap == "h:1" and r.client == {"client.id": "x"}
    assert [j.name for j in r.jobs] == [
        "delay-forwarders",
        "delay-status",
        "delay-status-2",
        "nightly",
    ]
    assert r.jobs[0].options == {"tiers": ["1s", "5s"]}
    assert not r.jobs[0].schedule.periodic
    assert r.jobs[1].schedule.every_seconds == 90
    assert r.jobs[2].schedule.describe() == "cron 30 3 * * * (Europe/Paris)"
    assert r.jobs[3].schedule.cron == "0 0 * * *"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[job]]\nname='x'", "needs a kind"),
        ("color = 'red'", "unknown key color"),
        ("[[job]]\nkind='a'\nevery='1m'\ncron='* * * * *'", "only one of"),
        ("[[job]]\nkind='a'\nevery='soon'", "invalid duration"),
        ("[[job]]\nkind='a'\ncron='61 * * * *'", "cron"),
        ("[[job]]\nname='a'\nkind='a'\n[[job]]\nname='a'\nkind='b'", "duplicate job name"),
    ],
)
def test_recipe_errors_are_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        recipe(text)


def test_job_names_are_unique_across_files_and_bootstrap_precedence(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text("bootstrap='h:1'\n[[job]]\nkind='delay-status'\nevery='1m'\n")
    b.write_text("[[job]]\nkind='delay-status'\nevery='1m'\n")
    with pytest.raises(RecipeError, match="in both"):
        load_recipes([a, b])
    b.write_text("bootstrap='h:2'\n[[job]]\nname='other'\nkind='delay-status'\nevery='1m'\n")
    recipes = load_recipes([a, b])
    cli = ClientSettings("cli:9")
    with pytest.raises(RecipeError, match="different bootstrap"):
        settings_for(recipes, cli, cli_explicit=False)
    assert settings_for(recipes, cli, cli_explicit=True).bootstrap == "cli:9"
    assert settings_for(recipes[:1], cli, cli_explicit=False).bootstrap == "h:1"
    with pytest.raises(RecipeError, match="not found"):
        load_recipes([tmp_path / "missing.toml"])


def test_repo_recipes_load_and_build() -> None:
    recipes = load_recipes([REPO / "recipes" / "delay-tiers.toml"])
    worker = Worker.from_recipes(recipes, ClientSettings("127.0.0.1:1"))
    assert {j.spec.kind for j in worker.jobs} == {"delay-forwarders", "delay-status"}


# --------------------------------------------------------------------------- registry


class _Loop:
    def __init__(self, log: list[str], fail_first: bool) -> None:
        self.log, self.fail_first = log, fail_first

    def run(self, stop: threading.Event) -> None:
        self.log.append("start")
        if self.fail_first and self.log.count("start") == 1:
            raise RuntimeError("transient")
        stop.wait()
        self.log.append("clean stop")


def test_registry_long_running_periodic_restart_and_stop() -> None:
    events: list[str] = []
    ticks: list[float] = []
    kind_loop, kind_tick = f"loop-{uuid.uuid4().hex[:6]}", f"tick-{uuid.uuid4().hex[:6]}"

    def make_loop(options: dict[str, Any], ctx: JobContext) -> _Loop:
        opts = take_options(options, {"fail_first"}, ctx.kind)
        return _Loop(events, bool(opts.get("fail_first")))

    def make_tick(options: dict[str, Any], ctx: JobContext) -> Any:
        take_options(options, set(), ctx.kind)
        return lambda: ticks.append(time.monotonic())

    register_job_kind(kind_loop, make_loop)
    register_job_kind(kind_tick, make_tick)
    assert kind_loop in job_kinds() and "delay-forwarders" in job_kinds()
    with pytest.raises(ValueError, match="already registered"):
        register_job_kind(kind_loop, make_loop)

    r = recipe(
        f"[[job]]\nkind='{kind_loop}'\nfail_first=true\n[[job]]\nkind='{kind_tick}'\nevery='200ms'\n"
    )
    worker = Worker.from_recipes([r], ClientSettings("127.0.0.1:1"))
    worker.start()
    try:
        wait_until(
            lambda: events.count("start") >= 2 and len(ticks) >= 3,
            10,
            message=lambda: f"a restart and 3 ticks (events {events}, {len(ticks)} ticks)",
        )
    finally:
        worker.stop(timeout=10)
    assert events == ["start", "start", "clean stop"]  # failed once, restarted, stopped cleanly
    assert len(ticks) >= 3
    states = {s["kind"]: s for s in worker.describe()}
    assert states[kind_loop]["restarts"] == 1 and states[kind_loop]["status"] == "stopped"

    with pytest.raises(RecipeError, match="unknown option"):
        Worker.from_recipes([recipe(f"[[job]]\nkind='{kind_loop}'\nbogus=1")], ClientSettings())
    with pytest.raises(RecipeError, match="is periodic; give every or cron"):
        Worker.from_recipes([recipe(f"[[job]]\nkind='{kind_tick}'")], ClientSettings())
    with pytest.raises(RecipeError, match="is long-running"):
        Worker.from_recipes([recipe(f"[[job]]\nkind='{kind_loop}'\nevery='1s'")], ClientSettings())
    with pytest.raises(RecipeError, match="unknown job kind"):
        Worker.from_recipes([recipe("[[job]]\nkind='nope'")], ClientSettings())


def test_stop_waits_for_a_periodic_run_that_ends_after_it_was_asked_to() -> None:
    """SIGTERM while a periodic job runs: the run finishes after the scheduler began to
    shut down, as a job finishing its work would, and stop() returns. apscheduler's own
    waiting shutdown held its job-store lock while the finishing run needed it."""
    kind = f"slow-tick-{uuid.uuid4().hex[:6]}"
    running = threading.Event()
    finished: list[bool] = []

    def make(options: dict[str, Any], ctx: JobContext) -> Any:
        take_options(options, set(), ctx.kind)

        def run() -> None:
            running.set()
            ctx.stop.wait(30)
            # Finish only once the scheduler is shutting down, as a run still busy when
            # SIGTERM arrives does: the moment apscheduler's waiting shutdown held its lock.
            scheduler = worker._scheduler
            wait_until(lambda: scheduler is not None and scheduler.state == STATE_STOPPED, 10)
            finished.append(True)

        return run

    register_job_kind(kind, make)
    worker = Worker.from_recipes(
        [recipe(f"[[job]]\nkind='{kind}'\nevery='100ms'\n")], ClientSettings("127.0.0.1:1")
    )
    worker.start()
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 10}, daemon=True)
    try:
        assert running.wait(10), "the periodic job never ran"
        stopper.start()
        stopper.join(20)
        assert not stopper.is_alive(), "Worker.stop() hung"
    finally:
        worker.stop_event.set()
    assert finished == [True]
    assert {s["status"] for s in worker.describe()} == {"stopped"}


# --------------------------------------------------------------------------- kops worker run


def test_worker_run_recipe_and_sigterm(kafka_broker: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    file = tmp_path / "delay.toml"
    file.write_text(
        f"""
        [[job]]
        kind = "delay-forwarders"
        tiers = ["1s", "2s"]
        template = "w{tag}.{{tier}}"
        group = "w-{tag}"
        stats_interval = 1

        [[job]]
        name = "report"
        kind = "delay-status"
        every = "1s"
        tiers = ["1s", "2s"]
        template = "w{tag}.{{tier}}"
        group = "w-{tag}"
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "kops", "worker", "run", "-v", str(file), "--json"],
        env={**os.environ, "KOPS_BOOTSTRAP": kafka_broker},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert '"report"' in first and '"delay-forwarders"' in first
        # Keep reading stdout: the every-second report would otherwise fill the
        # pipe and block the worker mid-write, so SIGTERM could not stop it.
        threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()  # type: ignore[union-attr]
        wait_until(
            lambda: (
                "tier 2s: assigned" in "".join(lines) and "tier 1s: pending 0" in "".join(lines)
            ),
            30,
            message=lambda: "the worker to start its jobs:\n" + "".join(lines[-20:]),
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143  # 128 + SIGTERM: stopped cleanly
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    text = "".join(lines)
    assert "delay forwarders stopped" in text and "worker stopped" in text
    assert "Traceback" not in text
