"""Issue #15: ``kops up`` with the shipped recipes on a fresh broker keeps stderr for what
a person must act on: no per-partition INFO lines, no "topic does not exist" warning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from kops import admin
from kops.groups import UnknownGroup, describe_group
from kops.testing import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]


def _assigned_members(bootstrap: str, group: str) -> int:
    try:
        return sum(1 for m in describe_group(bootstrap, group).members if m.assignment)
    except UnknownGroup:
        return 0


def test_up_with_the_shipped_recipes_is_quiet(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "kops", "up", "--bootstrap", bootstrap,
            "--data-dir", str(tmp_path / "data"),
            "--broker-config", "group.initial.rebalance.delay.ms=0",
        ],
        cwd=REPO,  # like ./scripts/up: the repo's recipes/*.toml
        env={k: v for k, v in os.environ.items() if k not in ("KOPS_BOOTSTRAP", "KOPS_DEBUG")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True),  # type: ignore[arg-type]
        threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True),  # type: ignore[arg-type]
    ]
    for t in readers:
        t.start()

    def alive() -> None:
        assert proc.poll() is None, "kops up exited:\n" + "".join(err[-20:])

    try:
        wait_until(
            lambda: alive() or any("kops up: running" in line for line in out),
            60,
            message=lambda: "kops up to come up:\n" + "".join(err[-20:]),
        )
        # Ready: every tier forwarder and the orders consumer hold their partitions; the
        # per-partition lines (and a missing-topic warning) would have been logged by now.
        wait_until(
            lambda: alive() or _assigned_members(bootstrap, "kops.delay.forwarders") == 18,
            60,
            message="18 tier forwarders assigned",
        )
        wait_until(
            lambda: alive() or _assigned_members(bootstrap, "orders-billing") >= 1,
            60,
            message="orders-billing assigned",
        )
        shown = "".join(out)
        assert "created orders (read by orders-billing)" in shown, shown
        assert [p.partition for p in admin.describe_topic(bootstrap, "orders").partitions]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 143, "".join(err[-20:])
    finally:
        if proc.poll() is None:
            proc.kill()
    for t in readers:
        t.join(10)

    text = "".join(err)
    assert "assigned partitions" not in text and "revoked partitions" not in text, text
    assert "does not exist" not in text, text
    assert not [line for line in err if " INFO " in line or " DEBUG " in line], text
    # What is left on stderr: the stop, said once.
    assert "kops up: stopped" in text and "Traceback" not in text


def test_verbose_brings_the_assignments_back(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    recipe = tmp_path / "delay.toml"
    recipe.write_text('[[job]]\nkind = "delay-forwarders"\ntiers = ["1s"]\n')
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "kops", "up", "-vv", "--bootstrap", bootstrap,
            "--data-dir", str(tmp_path / "data"),
            "--broker-config", "group.initial.rebalance.delay.ms=0", str(recipe),
        ],
        env={k: v for k, v in os.environ.items() if k != "KOPS_BOOTSTRAP"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        wait_until(
            lambda: "DEBUG kops.delay: tier 1s: assigned partitions [0]" in "".join(err),
            60,
            message=lambda: "the assignment at DEBUG:\n" + "".join(err[-20:]),
        )
        assert " INFO kops.broker" in "".join(err)  # the broker's log follows -vv too
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
