"""README.md "Your first ten minutes": the ```sh block under that heading, run command by
command in order, against `kops up` on a fresh broker (what ./scripts/up starts), with
KOPS_BOOTSTRAP pointing at it. Each command must exit 0 and print what the README says."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from kops.groups import UnknownGroup, describe_group
from kops.testing import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
HEADING = "## Your first ten minutes"


def walkthrough_commands(readme: str) -> list[str]:
    """The commands of the first ```sh block after HEADING (comments and blanks dropped)."""
    assert HEADING in readme, f"README.md has no {HEADING!r} section"
    section = readme.split(HEADING, 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```sh\n(.*?)^```", section, re.S | re.M)
    assert match, f"no ```sh block under {HEADING!r}"
    lines = [line.strip() for line in match.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_walkthrough_block_is_found() -> None:
    commands = walkthrough_commands((REPO / "README.md").read_text())
    assert commands[0].startswith("echo ") and "kops produce demo" in commands[0]
    assert all("kops " in c for c in commands)


def _assigned_members(bootstrap: str, group: str) -> int:
    try:
        return sum(1 for m in describe_group(bootstrap, group).members if m.assignment)
    except UnknownGroup:
        return 0


def _committed(bootstrap: str, group: str) -> list[int | None]:
    return [p.committed for p in describe_group(bootstrap, group).partitions]


def _values(stdout: str) -> list[str]:
    return re.findall(r" value=(.*)$", stdout, re.M)


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def test_readme_walkthrough(tmp_path: Path) -> None:
    commands = walkthrough_commands((REPO / "README.md").read_text())
    bootstrap = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "KOPS_DEBUG"}
    env["KOPS_BOOTSTRAP"] = bootstrap
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # ./scripts/up is `kops up` after the venv set-up: the bundled broker and recipes/*.toml.
    up = subprocess.Popen(
        [
            sys.executable, "-m", "kops", "up", "--data-dir", str(tmp_path / "data"),
            "--broker-config", "group.initial.rebalance.delay.ms=0",
        ],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    up_out: list[str] = []
    up_err: list[str] = []
    for stream, sink in ((up.stdout, up_out), (up.stderr, up_err)):
        threading.Thread(target=lambda s=stream, k=sink: k.extend(s), daemon=True).start()

    def up_alive() -> None:
        assert up.poll() is None, "kops up exited:\n" + "".join(up_err[-20:])

    ran: dict[str, subprocess.CompletedProcess[str]] = {}
    finished_at: dict[str, float] = {}

    def result(prefix: str, nth: int = 0) -> subprocess.CompletedProcess[str]:
        matching = [c for c in ran if c.startswith(prefix)]
        assert len(matching) > nth, f"the walkthrough has no command {prefix!r}"
        return ran[matching[nth]]

    # Checks that must hold right after a command, before the next one changes things.
    after: dict[str, Callable[[], None]] = {
        "kops rewind walkthrough --topic demo --by-duration 10m --execute": (
            lambda: _assert_equal(_committed(bootstrap, "walkthrough"), [0])
        ),
        "kops consume demo --group walkthrough --exit-at-end": (
            lambda: _assert_equal(_committed(bootstrap, "walkthrough"), [2])
        ),
    }
    try:
        wait_until(lambda: up_alive() or any("kops up: running" in line for line in up_out), 60)
        wait_until(
            lambda: up_alive() or _assigned_members(bootstrap, "kops.delay.forwarders") == 18,
            60,
            message="the delay forwarders assigned",
        )
        wait_until(
            lambda: up_alive() or _assigned_members(bootstrap, "orders-billing") >= 1,
            60,
            message="the orders consumer assigned",
        )
        for command in commands:
            res = subprocess.run(
                ["bash", "-c", command],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=90,
            )  # fmt: skip
            assert res.returncode == 0, f"{command}\nexit {res.returncode}\n{res.stderr}"
            ran[command] = res
            finished_at[command] = time.time()
            if command in after:
                after[command]()
        up_alive()
        up.send_signal(signal.SIGTERM)
        try:
            code = up.wait(60)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 143, "kops up did not stop:\n" + "".join(up_err[-30:])
    finally:
        if up.poll() is None:
            up.kill()

    # 1. produce, consume
    assert "produced 1 record to demo" in result("echo 'hello, kops' | kops produce demo").stderr
    assert _values(result("kops consume demo --from-beginning").stdout) == ["hello, kops"]

    # 2. the delayed record arrives, not before it was due
    sent = result("echo 'five seconds later' | kops delay send demo")
    (msg_id,) = sent.stdout.split()
    arrived = result("kops consume demo --max-messages 1").stdout
    assert _values(arrived) == ["five seconds later"], arrived
    assert f"kops.message.id={msg_id}" in arrived
    due_ms = int(re.search(r"kops\.delay\.due-ms=(\d+)", arrived).group(1))  # type: ignore[union-attr]
    stamp = re.search(r" timestamp=(\S+) ", arrived).group(1)  # type: ignore[union-attr]
    assert _ms(stamp) >= due_ms, (stamp, due_ms)

    # 3. the dead letter
    dead = result("kops consume orders.dlq").stdout
    assert _values(dead) == ['{"id": 1, "amount": -5}'], dead
    assert "kops.dlq.exception.class=retry_dlq_consumer.InvalidOrder" in dead, dead
    listed = result("kops dlq list").stdout
    assert re.search(r"^orders\.dlq\s.*\b1\b", listed, re.M), listed
    assert "InvalidOrder" in result("kops dlq inspect orders.dlq").stdout

    # 4. the rewind: the group read both records, went back to 0, and read them again
    both = ["hello, kops", "five seconds later"]
    assert _values(result("kops consume demo --group walkthrough").stdout) == both
    plan = result("kops rewind walkthrough --topic demo --by-duration 10m")
    assert re.search(r"^demo\s+0\s+2\s+0\s", plan.stdout, re.M), plan.stdout  # CURRENT 2, NEW 0
    assert "dry run: group walkthrough would re-read 2" in plan.stderr, plan.stderr
    assert _values(result("kops consume demo --group walkthrough", 1).stdout) == both


def _assert_equal(got: object, want: object) -> None:
    assert got == want, (got, want)
