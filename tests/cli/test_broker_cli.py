"""`kops broker start` through the real entry point."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.broker.clients import consume_all, create_topic, produce

Kops = Callable[..., subprocess.CompletedProcess[str]]


def _start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kops",
            "broker",
            "start",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    match = re.fullmatch(r"kops broker listening on (127\.0\.0\.1):(\d+)\n", line)
    assert match, line
    assert int(match.group(2)) != 0
    return proc, f"{match.group(1)}:{match.group(2)}"


def test_start_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    proc, bootstrap = _start(tmp_path, "--config", "num.partitions=3")
    try:
        produce(bootstrap, "auto-created", [(b"k", b"v")])
        assert [m.value() for m in consume_all(bootstrap, "auto-created", 1, partitions=3)] == [
            b"v"
        ]
        create_topic(bootstrap, "explicit", partitions=2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM, stderr  # 143: a clean stop, as every command
    assert (tmp_path / ".kafka_cleanshutdown").exists()
    assert (tmp_path / "explicit-1" / "00000000000000000000.log").exists()


def test_sigint_stops_cleanly(tmp_path: Path) -> None:
    proc, _ = _start(tmp_path)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGINT, stderr  # 130
    assert "Traceback" not in stderr
    assert (tmp_path / ".kafka_cleanshutdown").exists()


def test_advertise_is_reported_in_metadata(tmp_path: Path) -> None:
    proc, bootstrap = _start(tmp_path, "--advertise", "localhost:0")
    try:
        from confluent_kafka.admin import AdminClient

        brokers = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).brokers
        assert [b.host for b in brokers.values()] == ["localhost"]
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_bad_config_syntax_is_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kops",
            "broker",
            "start",
            "--data-dir",
            str(tmp_path),
            "--config",
            "novalue",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "key=value" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    proc, bootstrap = _start(tmp_path / "a")
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "kops",
                "broker",
                "start",
                "--listen",
                bootstrap,
                "--data-dir",
                str(tmp_path / "b"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1
        assert "cannot listen" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quorum", "1@127.0.0.1"], "expected ID@HOST:PORT"),
        (["--quorum", "1@127.0.0.1:1,1@127.0.0.1:2"], "listed twice"),
        (["--node-id", "4", "--quorum", "1@127.0.0.1:1,2@127.0.0.1:2"], "not among the voters"),
    ],
)
def test_bad_quorum_settings_are_one_line_errors(
    run_kops: Kops, tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_kops("broker", "start", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
                      *args)  # fmt: skip
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
