"""Shared pieces for every ``kops`` command.

- :func:`kafka_options`: ``--bootstrap`` (env ``KOPS_BOOTSTRAP``), ``-X key=value`` and
  optionally ``--json``; the command receives ``settings: ClientSettings`` (and ``as_json``).
- :class:`KopsGroup`: the click group class that turns every failure into one
  ``error: ...`` line on stderr and exit code 1 (full traceback only with ``KOPS_DEBUG=1``).
- :func:`print_json`, :func:`console`, :func:`echo_err`: output helpers. JSON never goes
  through rich; rich is for tables meant for people.
- :func:`graceful_stop`: SIGTERM and SIGINT ask a long-running command to stop cleanly
  (finish or hand back the current work, commit, close consumers) and exit 143 / 130.
- Parsers, each also a click parameter type: ``key=value`` (:data:`KEY_VALUE`), durations
  like ``30s``/``5m``/``1h``/``2d`` (:data:`DURATION`), and timestamps as ISO-8601, epoch
  milliseconds or "a duration ago" (:data:`TIMESTAMP`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
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

from kops.client import DEFAULT_BOOTSTRAP, ClientSettings
from kops.errors import KopsError
from kops.timeparse import parse_duration, parse_timestamp

__all__ = [
    "DURATION",
    "INT_LIST",
    "KEY_VALUE",
    "POSITIVE_INT_LIST",
    "TIMESTAMP",
    "GracefulStop",
    "KopsGroup",
    "StopRequested",
    "console",
    "echo_err",
    "graceful_stop",
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
    - :class:`kops.errors.KopsError` (broker, Kafka and kops errors) -> exit 1
    - anything unexpected -> exit 1, and a full traceback only when ``KOPS_DEBUG=1``
    - Ctrl-C -> exit 130 (long-running commands stop cleanly first: :func:`graceful_stop`)
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
        except KopsError as exc:
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
    """``"0,2, 5"`` -> ``[0, 2, 5]``, ``"0,1,3-5"`` -> ``[0, 1, 3, 4, 5]`` (duplicates
    dropped, order kept); each >= ``minimum``. The one parser of number lists (partitions,
    partition counts) for every command."""
    out: dict[int, None] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo_text, dash, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if dash else lo
        except ValueError:
            raise ValueError(
                f"expected comma-separated integers or ranges (0,1,3-5), got {part!r}"
            ) from None
        if lo < minimum:
            raise ValueError(f"each number must be >= {minimum}, got {lo}")
        if hi < lo:
            raise ValueError(f"range {part!r} ends before it starts")
        out.update(dict.fromkeys(range(lo, hi + 1)))
    if not out:
        raise ValueError("expected at least one number")
    return list(out)


class _IntListType(click.ParamType):
    name = "N[,N-M...]"

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


# --------------------------------------------------------------------------- signals
# One way for every long-running command (consume, delay worker, worker run, up, backlog
# fanout, replay, lag --watch, bench) to treat SIGTERM like Ctrl-C.

#: Exit status after a clean stop on a signal: the shell's 128 + signal number.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(BaseException):
    """Raised out of a blocking call by :func:`graceful_stop` (``interrupt=True`` or inside
    :meth:`GracefulStop.interruptible`). A BaseException, so library ``except Exception``
    blocks let it through while their ``finally`` blocks (flush, commit, close) run.
    :func:`graceful_stop` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class GracefulStop:
    """What :func:`graceful_stop` yields: the stop event and the signals seen."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signals: list[int] = []
        self._raise_on_signal = False
        self._raised = False

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking at once on a stop signal."""
        return self.event.wait(timeout)

    @property
    def exit_code(self) -> int | None:
        """128 + the first signal's number (130 SIGINT, 143 SIGTERM); None when none came."""
        return 128 + self.signals[0] if self.signals else None

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.signals[0]).name if self.signals else None

    def check(self) -> None:
        """Raise :class:`StopRequested` if a stop signal came (for progress callbacks)."""
        if self.signals and not self._raised:
            self._raised = True
            raise StopRequested(self.signals[0])

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Inside, a stop signal raises :class:`StopRequested` where the code is blocked (a
        poll waiting for records), instead of only setting the event; raises at once when
        a signal already came."""
        self.check()
        self._raise_on_signal = True
        try:
            yield
        finally:
            self._raise_on_signal = False

    def exit_if_stopped(self) -> None:
        """Exit with :attr:`exit_code` when a stop signal came (no traceback, no message)."""
        if self.exit_code is not None:
            raise click.exceptions.Exit(self.exit_code)

    # -- called from the signal handler (main thread, between bytecodes)

    def _on_signal(self, signum: int, on_stop: Callable[[], None] | None) -> None:
        if self.event.is_set():
            if signum == signal.SIGINT:
                _exit_now(signum)
            return  # a repeated SIGTERM: already stopping
        self.signals.append(signum)
        self.event.set()
        _write_err(f"{signal.Signals(signum).name}: stopping (Ctrl-C again to exit at once)\n")
        if on_stop is not None:
            on_stop()
        if self._raise_on_signal:
            self.check()


def _write_err(text: str) -> None:
    # os.write, not sys.stderr: a handler can run while the main thread is inside a
    # buffered write to stderr, and re-entering it would raise RuntimeError.
    with contextlib.suppress(OSError):
        os.write(2, text.encode("utf-8", errors="replace"))


def _exit_now(signum: int) -> None:
    """A second Ctrl-C: exit at once, without waiting for the clean stop."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    _write_err("interrupted again: exiting without cleanup\n")
    os._exit(128 + signum)


@contextlib.contextmanager
def graceful_stop(
    on_stop: Callable[[], None] | None = None,
    *,
    interrupt: bool = False,
    exit_on_signal: bool = True,
    interrupted: str | None = None,
) -> Iterator[GracefulStop]:
    """SIGTERM and SIGINT ask the block to stop cleanly; a second Ctrl-C exits at once.

    The first signal sets ``stop.event`` and calls ``on_stop`` (e.g. a job's ``stop``);
    with ``interrupt=True`` (or inside ``stop.interruptible()``) it also raises
    :class:`StopRequested` from wherever the block is waiting, so ``finally`` blocks below
    flush, commit and close; the exception ends the block quietly. Leaving the block after
    a signal exits with 130 (SIGINT) or 143 (SIGTERM) unless ``exit_on_signal=False`` (then
    call ``stop.exit_if_stopped()`` when done). ``interrupted`` is printed on stderr when a
    :class:`StopRequested` ended the block. Outside the main thread (signals cannot be
    caught there) nothing is installed.

    ::

        with graceful_stop(on_stop=job.stop) as stop:
            report = job.run()
            print(report)
        # exits 143 here after SIGTERM, 130 after Ctrl-C
    """
    stop = GracefulStop()
    stop._raise_on_signal = interrupt
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: object) -> None:
        stop._on_signal(signum, on_stop)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        try:
            yield stop
        except StopRequested:
            if interrupted:
                echo_err(interrupted)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if exit_on_signal:
        stop.exit_if_stopped()
