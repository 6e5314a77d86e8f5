"""``kops bench produce|consume|sweep``: throughput and latency load tests. Logic is in
kops.recipes.bench."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import click
from rich.progress import TaskID
from rich.table import Table

from kops import admin
from kops.cli.common import (
    KEY_VALUE,
    POSITIVE_INT_LIST,
    console,
    echo_err,
    graceful_stop,
    kafka_options,
    print_json,
    progress_bar,
)
from kops.client import ClientSettings
from kops.recipes.bench import BenchResult, bench_consume, bench_produce
from kops.recipes.bench import Progress as BenchProgress
from kops.recipes.bench.sweep import SweepResult, plot_sweep
from kops.recipes.bench.sweep import sweep as run_sweep

_ACKS = click.Choice(["all", "-1", "0", "1"])


def _producer_options(f):  # type: ignore[no-untyped-def]
    """Options shared by ``bench produce`` and ``bench sweep``."""
    options = [
        click.option(
            "--record-size",
            "-s",
            type=click.IntRange(min=0),
            default=1024,
            show_default=True,
            help="Bytes per record value.",
        ),
        click.option("--acks", type=_ACKS, default="all", show_default=True, help="Producer acks."),
        click.option(
            "--batch-size", type=click.IntRange(min=1), default=None, help="batch.size in bytes."
        ),
        click.option("--linger-ms", type=click.FloatRange(min=0), default=None, help="linger.ms."),
        click.option(
            "--compression",
            type=click.Choice(["none", "gzip", "snappy", "lz4", "zstd"]),
            default=None,
            help="compression.type.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


#: Printed when SIGTERM/Ctrl-C stop a bench early; the partial figures are printed first
#: (table or JSON, ``"partial": true``), then the command exits 143/130.
_STOPPED = "bench stopped before it finished: partial figures"


@contextlib.contextmanager
def _progress() -> Iterator[BenchProgress]:
    """A bar per bench phase (produce, consume; per partition count in a sweep)."""
    with progress_bar() as bar:
        tasks: dict[str, TaskID] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update


def _stopped_note(what: str, scratch: bool) -> None:
    echo_err(f"{_STOPPED} ({what}{'; scratch topics deleted' if scratch else ''})")


def _result_table(results: list[BenchResult]) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in ("BENCH", "RECORDS", "RECORDS/S", "MB/S", "AVG-MS", "MAX-MS"):
        table.add_column(col, justify="left" if col == "BENCH" else "right")
    for col in ("P50", "P95", "P99", "P99.9", "ERRORS"):
        table.add_column(col, justify="right")
    for r in results:
        lat = r.latency
        cells = (
            ["-"] * 6
            if lat is None
            else [f"{v:.1f}" for v in (lat.avg, lat.max, lat.p50, lat.p95, lat.p99, lat.p999)]
        )
        table.add_row(
            r.kind,
            str(r.records),
            f"{r.records_per_sec:,.0f}",
            f"{r.mb_per_sec:.2f}",
            *cells,
            str(r.errors),
        )
    return table


@click.group("bench")
def bench() -> None:
    """Load tests: produce and consume throughput and latency, and a partition-count sweep."""


@bench.command("produce")
@click.argument("topic", required=False)
@click.option("--num-records", "-n", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option(
    "--throughput",
    type=float,
    default=-1,
    show_default=True,
    help="Target records per second; -1 for no limit.",
)
@_producer_options
@click.option(
    "--partitions",
    "-p",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Partitions of the scratch topic made when no TOPIC is given.",
)
@click.option("--keep-topic", is_flag=True, help="Keep the scratch topic afterwards.")
@click.option(
    "--producer-prop",
    "producer_props",
    type=KEY_VALUE,
    multiple=True,
    help="Extra producer property, e.g. --producer-prop enable.idempotence=true.",
)
@kafka_options()
def produce(
    *,
    topic: str | None,
    num_records: int,
    throughput: float,
    record_size: int,
    acks: str,
    batch_size: int | None,
    linger_ms: float | None,
    compression: str | None,
    partitions: int,
    keep_topic: bool,
    producer_props: tuple[tuple[str, str], ...],
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Produce records as fast as allowed and report throughput and latency.

    Like kafka-producer-perf-test. Latency is per record, from send to acknowledgement.
    Without TOPIC a scratch topic is created (--partitions) and deleted afterwards.
    """
    if throughput == 0 or throughput < -1:
        raise click.UsageError("--throughput must be positive, or -1 for no limit")
    scratch = topic is None
    name = topic or f"kops-bench-{uuid.uuid4().hex[:10]}"
    # SIGTERM/Ctrl-C set the stop event: the bench stops producing at once (also in a
    # throttled wait), flushes, deletes its scratch topic, prints the figures so far
    # (marked partial) and exits 143/130.
    with graceful_stop() as stop:
        if scratch:
            admin.create_topic(settings, name, partitions)
        try:
            with _progress() as update:
                result = bench_produce(
                    settings,
                    name,
                    records=num_records,
                    record_size=record_size,
                    throughput=None if throughput < 0 else throughput,
                    acks=acks,
                    batch_size=batch_size,
                    linger_ms=linger_ms,
                    compression=compression,
                    config=dict(producer_props),
                    progress=update,
                    stop=stop.event,
                )
        finally:
            if scratch and not keep_topic:
                admin.delete_topic(settings, name)
        _report(result, as_json)
        if result.partial:
            _stopped_note(f"{result.records} of {num_records} records", scratch and not keep_topic)


@bench.command("consume")
@click.argument("topic")
@click.option(
    "--num-records",
    "-n",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many records [default: all retained at the start].",
)
@click.option(
    "--consumers",
    "-c",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Consumers sharing the partitions.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Stop after this many seconds without a record.",
)
@click.option(
    "--fetch-max-bytes", type=click.IntRange(min=1), default=None, help="fetch.max.bytes."
)
@kafka_options()
def consume(
    *,
    topic: str,
    num_records: int | None,
    consumers: int,
    timeout: float,
    fetch_max_bytes: int | None,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Read TOPIC from the beginning and report throughput and record age.

    Like kafka-consumer-perf-test, but partitions are assigned (no group, nothing
    committed). Latency is each record's age on arrival: end-to-end latency while a
    producer runs, the backlog's age otherwise.
    """
    with graceful_stop() as stop:
        with _progress() as update:
            result = bench_consume(
                settings,
                topic,
                records=num_records,
                consumers=consumers,
                timeout=timeout,
                fetch_max_bytes=fetch_max_bytes,
                progress=update,
                stop=stop.event,
            )
        _report(result, as_json)
        if result.partial:
            _stopped_note(f"{result.records} records consumed", False)


def _report(result: BenchResult, as_json: bool) -> None:
    if as_json:
        print_json(result.to_dict())
    else:
        console().print(_result_table([result]))
        echo_err(result.summary())
    if result.errors:
        raise click.ClickException(
            f"{result.errors} record(s) failed: {result.first_error or 'not delivered in time'}"
        )


@bench.command("sweep")
@click.option(
    "--partitions",
    "-p",
    "counts",
    type=POSITIVE_INT_LIST,
    default="1,2,4,8,16",
    show_default=True,
    help="Partition counts to measure, each on a fresh topic.",
)
@click.option(
    "--consumers",
    "-c",
    type=click.IntRange(min=1),
    default=None,
    help="Consumers reading each topic [default: the largest partition count].",
)
@click.option(
    "--target-throughput",
    "-t",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Throughput the topic must sustain, in MB/s, for a recommendation.",
)
@click.option("--num-records", "-n", type=click.IntRange(min=1), default=20_000, show_default=True)
@_producer_options
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG chart.")
@click.option("--keep-topics", is_flag=True, help="Keep the sweep's topics afterwards.")
@kafka_options()
def sweep(
    *,
    counts: list[int],
    consumers: int | None,
    target_throughput: float | None,
    num_records: int,
    record_size: int,
    acks: str,
    batch_size: int | None,
    linger_ms: float | None,
    compression: str | None,
    plot: str | None,
    keep_topics: bool,
    settings: ClientSettings,
    as_json: bool,
) -> None:
    """Measure produce and consume throughput for each partition count and recommend one.

    The recommendation follows Confluent's rule: partitions = ceil(max(t/p, t/c)), where p
    and c are the produce and consume MB/s per partition measured by this sweep at its
    smallest count and t is --target-throughput. The smallest count that actually reached t
    is shown too. The table, the recommendation line (on stderr, also with --json), the JSON
    and the --plot chart (throughput and p99 latency per count, recommendation marked) all
    come from the same figures.
    """
    if plot is not None:
        _check_matplotlib()
    with graceful_stop(exit_on_signal=False) as stop, _progress() as update:
        result = run_sweep(
            settings,
            counts,
            records=num_records,
            record_size=record_size,
            consumers=consumers or max(counts),
            acks=acks,
            batch_size=batch_size,
            linger_ms=linger_ms,
            compression=compression,
            keep_topics=keep_topics,
            progress=update,
            stop=stop.event,
        )
    if result.partial:
        # The counts measured in full before the stop; no plot, no recommendation when none.
        if as_json:
            print_json(result.to_dict(target_throughput) | {"plot": None})
        else:
            console().print(_sweep_table(result))
        if result.points:
            echo_err(result.recommend(target_throughput).text)
        done = len(result.points)
        _stopped_note(
            f"{done} of {len(set(counts))} partition count{'s' * (len(set(counts)) != 1)} measured",
            not keep_topics,
        )
        stop.exit_if_stopped()
    rec = result.recommend(target_throughput)
    if plot is not None:
        plot_sweep(result, plot, target_throughput)  # marks the same recommendation
    if as_json:
        data = result.to_dict(target_throughput)
        data["plot"] = (
            None if plot is None else {"path": plot, "recommended_partitions": rec.partitions}
        )
        print_json(data)
    else:
        console().print(_sweep_table(result))
    echo_err(rec.text)
    if plot is not None:
        echo_err(f"wrote {plot}")
    stop.exit_if_stopped()  # a signal came as the sweep finished: still 143/130


def _sweep_table(result: SweepResult) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in (
        "PARTITIONS",
        "PRODUCE-MB/S",
        "PRODUCE-REC/S",
        "PRODUCE-P99-MS",
        "CONSUME-MB/S",
        "CONSUME-REC/S",
        "CONSUME-P99-MS",
        "MB/S-PER-PARTITION",
    ):
        table.add_column(col, justify="right")
    for pt in result.points:
        table.add_row(
            str(pt.partitions),
            f"{pt.produce.mb_per_sec:.2f}",
            f"{pt.produce.records_per_sec:,.0f}",
            "-" if pt.produce.latency is None else f"{pt.produce.latency.p99:.1f}",
            f"{pt.consume.mb_per_sec:.2f}",
            f"{pt.consume.records_per_sec:,.0f}",
            "-" if pt.consume.latency is None else f"{pt.consume.latency.p99:.1f}",
            f"{pt.mb_per_sec / pt.partitions:.2f}",
        )
    return table


def _check_matplotlib() -> None:
    # Fail before a long sweep, not after it.
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.ClickException("--plot needs matplotlib: pip install matplotlib") from None
