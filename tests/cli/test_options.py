"""Option parsing, help and error handling: no broker needed."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime

import click
import pytest
from click.testing import CliRunner

from kops.cli.common import parse_duration, parse_key_value, parse_timestamp
from kops.cli.main import main


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        path = (*prefix, name)
        yield path
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, path)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800), ("500ms", 0.5), ("1h30m", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_bare_number_is_seconds() -> None:
    assert parse_duration("7") == 7
    assert parse_duration("2.5") == 2.5


@pytest.mark.parametrize("bad", ["", "abc", "5x", "m5", "-3", "5m garbage"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_parse_timestamp_forms() -> None:
    now = 1_714_564_800_000  # 2024-05-01T12:00:00Z
    assert parse_timestamp("1714564800000", now_ms=0) == now
    assert parse_timestamp("2024-05-01T12:00:00Z") == now
    assert parse_timestamp("2024-05-01T14:00:00+02:00") == now
    assert parse_timestamp("2024-05-01 12:00:00") == now  # no offset: UTC
    assert parse_timestamp("2024-05-01T12:00:00.250Z") == now + 250
    assert parse_timestamp("2024-05-01") == int(datetime(2024, 5, 1, tzinfo=UTC).timestamp()) * 1000
    assert parse_timestamp("now", now_ms=now) == now
    assert parse_timestamp("15m", now_ms=now) == now - 15 * 60 * 1000
    with pytest.raises(ValueError, match="invalid timestamp"):
        parse_timestamp("yesterday-ish")


def test_parse_key_value() -> None:
    assert parse_key_value("retention.ms=1000") == ("retention.ms", "1000")
    assert parse_key_value("a=b=c") == ("a", "b=c")
    assert parse_key_value("empty=") == ("empty", "")
    for bad in ("novalue", "=x", ""):
        with pytest.raises(ValueError):
            parse_key_value(bad)


def test_every_command_has_help() -> None:
    runner = CliRunner()
    paths = list(_all_commands(main))
    assert {("topic", "create"), ("topic", "describe"), ("produce",), ("consume",)} <= set(paths)
    for path in paths:
        result = runner.invoke(main, [*path, "--help"], catch_exceptions=False)
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
        cmd = main
        for part in path:
            cmd = cmd.get_command(click.Context(cmd), part)  # type: ignore[attr-defined]
        # Client commands (not `kops broker ...`, which runs a broker) all take --bootstrap.
        if not isinstance(cmd, click.Group) and path[0] in ("topic", "produce", "consume"):
            assert "--bootstrap" in result.output, path
            assert "--client-config" in result.output, path


def test_bad_config_syntax_is_one_line_error(run_kops) -> None:
    # The value is rejected before any connection is attempted.
    result = run_kops(
        "topic",
        "create",
        "x",
        "--partitions",
        "1",
        "--config",
        "retention.ms",
        bootstrap=f"127.0.0.1:{_closed_port()}",
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "expected key=value" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["topic", "create", "x"],  # missing --partitions
        ["topic", "create", "x", "--partitions", "0"],
        ["topic", "config", "x"],  # nothing to change
        ["consume", "t", "--offset", "3", "--timestamp", "1h"],
        ["consume", "t", "--timeout", "soon"],
        ["consume", "t", "--partition", "a"],
        ["produce", "t", "--key", "k", "--key-separator", ":"],
        ["topic", "create", "x", "-p", "1", "-X", "nonsense"],
    ],
)
def test_usage_mistakes_exit_1_with_one_line(args: list[str]) -> None:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_unreachable_broker_fails_fast(run_kops) -> None:
    bootstrap = f"127.0.0.1:{_closed_port()}"
    for args, stdin in (
        (["topic", "list"], None),
        (["topic", "describe", "x"], None),
        (["topic", "create", "x", "-p", "1"], None),
        (["produce", "x"], "hello\n"),
        (["consume", "x", "--from-beginning"], None),
    ):
        started = time.monotonic()
        result = run_kops(*args, bootstrap=bootstrap, input=stdin, timeout=30)
        elapsed = time.monotonic() - started
        assert result.returncode == 1, (args, result.stderr)
        assert elapsed < 8, (args, elapsed)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (args, result.stderr)
        assert lines[0].startswith(f"error: cannot reach Kafka at {bootstrap}"), lines[0]


def test_debug_env_shows_traceback(run_kops) -> None:
    bootstrap = f"127.0.0.1:{_closed_port()}"
    result = run_kops("topic", "list", bootstrap=bootstrap, env={"KOPS_DEBUG": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot reach Kafka")


def test_version_and_python_m(run_kops) -> None:
    result = run_kops("--version")
    assert result.returncode == 0
    assert "kops" in result.stdout
