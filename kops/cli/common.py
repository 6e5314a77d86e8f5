"""Shared pieces for every ``kops`` command.

- :func:`kafka_options`: ``--bootstrap`` (env ``KOPS_BOOTSTRAP``), ``-X key=value`` and
  optionally ``--json``; the command receives ``settings: ClientSettings`` (and ``as_json``).
- :class:`KopsGroup`: the click group class that turns every failure into one
  ``error: ...`` line on stderr and exit code 1 (full traceback only with ``KOPS_DEBUG=1``).
- :func:`print_json`, :func:`console`, :func:`echo_err`: output helpers. JSON never goes
  through rich; rich is for tables meant for people.
- Parsers, each also a click parameter type: ``key=value`` (:data:`KEY_VALUE`), durations
  like ``30s``/``5m``/``1h``/``2d`` (:data:`DURATION`), and timestamps as ISO-8601, epoch
  milliseconds or "a duration ago" (:data:`TIMESTAMP`).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from kops.client import DEFAULT_BOOTSTRAP, ClientSettings, KopsClientError
from kops.timeparse import parse_duration, parse_timestamp

__all__ = [
    "DURATION",
    "INT_LIST",
    "KEY_VALUE",
    "POSITIVE_INT_LIST",
    "TIMESTAMP",
    "KopsGroup",
    "console",
    "echo_err",
    "kafka_options",
    "parse_duration",
    "parse_int_list",
    "parse_key_value",
    "parse_timestamp",
    "print_json",
    "progress_bar",
]

F = TypeVar("F", bound=Callable[..., Any])

# --------------------------------------------------------------------------- parsing
# Durations and timestamps are parsed in kops.timeparse (no click there) so
# recipes and the worker share the one parser with the CLI.


def parse_key_value(text: str, *, allow_empty_value: bool = True) -> tuple[str, str]:
    """``"retention.ms=1000"`` -> ``("retention.ms", "1000")``; splits at the first ``=``."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected key=value, got {text!r}")
    if not value and not allow_empty_value:
        raise ValueError(f"missing value in {text!r}")
    return key, value


class _KeyValueType(click.ParamType):
    name = "KEY=VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return parse_key_value(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _DurationType(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _TimestampType(click.ParamType):
    name = "TIMESTAMP"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        try:
            return parse_timestamp(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


#: click type giving ``(key, value)`` tuples.
KEY_VALUE = _KeyValueType()
#: click type giving seconds as a float.
DURATION = _DurationType()
#: click type giving epoch milliseconds.
TIMESTAMP = _TimestampType()


# --------------------------------------------------------------------------- output


def console(stderr: bool = False) -> Console:
    """A rich Console with markup, emoji and highlighting off (data is printed verbatim).

    When stdout is not a terminal and COLUMNS is unset, tables get room to 200 columns
    instead of rich's default 80, so piped output is not wrapped.
    """
    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty() and "COLUMNS" not in os.environ:
        width = 200
    return Console(
        file=stream, markup=False, emoji=False, highlight=False, width=width, soft_wrap=False
    )


def print_json(data: Any, *, compact: bool = False) -> None:
    """JSON to stdout: pretty by default, one line with ``compact`` (for streams)."""
    if compact:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    else:
        text = json.dumps(data, ensure_ascii=False, indent=2, default=str)
    click.echo(text)


def echo_err(message: str) -> None:
    """One line for people on stderr (progress, summaries, warnings)."""
    click.echo(message, err=True)


# --------------------------------------------------------------------------- options


def kafka_options(*, json_output: bool = True) -> Callable[[F], F]:
    """Add ``--bootstrap``, ``-X/--client-config`` and (optionally) ``--json``.

    The decorated command receives ``settings: ClientSettings`` in place of the raw
    ``bootstrap``/``client_config`` values, plus ``as_json: bool`` when ``json_output``.
    """

    def decorator(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bootstrap = kwargs.pop("bootstrap")
            client_config = kwargs.pop("client_config")
            kwargs["settings"] = ClientSettings(
                bootstrap=bootstrap.strip(), config=dict(client_config)
            )
            return f(*args, **kwargs)

        opts = [
            click.option(
                "--bootstrap",
                "-b",
                envvar="KOPS_BOOTSTRAP",
                default=DEFAULT_BOOTSTRAP,
                show_default=True,
                metavar="HOST:PORT[,...]",
                help="Kafka bootstrap servers (env KOPS_BOOTSTRAP).",
            ),
            click.option(
                "--client-config",
                "-X",
                "client_config",
                type=KEY_VALUE,
                multiple=True,
                help="Extra librdkafka client property, e.g. -X security.protocol=SASL_SSL "
                "(repeatable).",
            ),
        ]
        if json_output:
            opts.append(
                click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
            )
        out: Callable[..., Any] = wrapper
        for opt in reversed(opts):
            out = opt(out)
        return out  # type: ignore[return-value]

    return decorator


# --------------------------------------------------------------------------- errors


def _debug() -> bool:
    return os.environ.get("KOPS_DEBUG", "") not in ("", "0", "false", "no")


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


# click >= 8.2 raises this for a group invoked without a subcommand.
_NoArgsIsHelpError: type[click.UsageError] | None = getattr(
    click.exceptions, "NoArgsIsHelpError", None
)


class KopsGroup(click.Group):
    """Root group: every failure becomes ``error: <one line>`` on stderr and exit code 1.

    - click usage errors (missing or bad option values) -> exit 1 with a pointer to --help
    - :class:`kops.client.KopsClientError` (broker and Kafka errors) -> exit 1
    - anything unexpected -> exit 1, and a full traceback only when ``KOPS_DEBUG=1``
    - Ctrl-C -> exit 130
    """

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        code = 0
        try:
            rv = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
            if isinstance(rv, int) and not isinstance(rv, bool):
                code = rv
        except click.UsageError as exc:
            if _NoArgsIsHelpError is not None and isinstance(exc, _NoArgsIsHelpError):
                exc.show()  # a bare `kops` or `kops topic` prints its help
            else:
                hint = ""
                if exc.ctx is not None:
                    hint = f" (see '{exc.ctx.command_path} --help')"
                echo_err(f"error: {_one_line(exc.format_message())}{hint}")
                code = 1
        except click.ClickException as exc:
            echo_err(f"error: {_one_line(exc.format_message())}")
            code = 1
        except click.Abort:
            echo_err("error: interrupted")
            code = 130
        except KopsClientError as exc:
            if _debug():
                traceback.print_exc()
            echo_err(f"error: {_one_line(str(exc))}")
            code = 1
        except Exception as exc:
            if _debug():
                traceback.print_exc()
            echo_err(
                f"error: unexpected {type(exc).__name__}: {_one_line(str(exc))} "
                "(set KOPS_DEBUG=1 for a traceback)"
            )
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code)


# --------------------------------------------------------------------------- lists, progress
# Added for the rewind/replay/lag/bench commands; generic enough for any command.


def parse_int_list(text: str, *, minimum: int = 0) -> list[int]:
    """``"0,2, 5"`` -> ``[0, 2, 5]`` (duplicates dropped, order kept); each >= ``minimum``."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            n = int(part)
        except ValueError:
            raise ValueError(f"expected comma-separated integers, got {part!r}") from None
        if n < minimum:
            raise ValueError(f"each number must be >= {minimum}, got {n}")
        if n not in out:
            out.append(n)
    if not out:
        raise ValueError("expected at least one number")
    return out


class _IntListType(click.ParamType):
    name = "N[,N...]"

    def __init__(self, minimum: int = 0):
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        try:
            return parse_int_list(str(value), minimum=self.minimum)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


#: click type giving a list of ints >= 0 from ``0,2,5`` (partition numbers).
INT_LIST = _IntListType(0)
#: click type giving a list of ints >= 1 from ``1,2,4,8`` (counts).
POSITIVE_INT_LIST = _IntListType(1)


class _RateColumn(ProgressColumn):
    """Items per second (rich only ships a bytes-per-second column)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s")


def progress_bar(*, transient: bool = False) -> Progress:
    """A rich progress bar on stderr (bar, count, rate, elapsed, ETA), so stdout stays data.

    Disabled when stderr is not a terminal: scripts and logs get no control codes.
    """
    err = console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=transient,
        disable=not err.is_terminal,
    )
