"""Broker restart time after a clean stop and after kill -9 (issue #15: recovery point).

    .venv/bin/python benchmarks/restart_recovery.py                    # 200 MB, 1 GiB segments
    .venv/bin/python benchmarks/restart_recovery.py --mb 300 --segment-mb 64
    .venv/bin/python benchmarks/restart_recovery.py --kops-src /tmp/kops-head  # another tree's broker

Fills one partition with --mb MB of 1 KiB records (acks=all) and stops the broker
cleanly, then times broker starts, from spawning the process to its "listening"
line (printed once every log is open, so recovery included):

  clean       after a clean stop (SIGTERM)
  kill-idle   after kill -9 with nothing written since the last checkpoint
  kill-write  after kill -9 right after a fresh acks=all write of --write-kb KB

Prints the median and range of --runs starts per case, and what the broker says it
re-validated and how long that took ("unclean shutdown: re-validated N of M segments
... in S s"; "-" when the broker doesn't log it). --cold evicts the data files from
the page cache before each start (posix_fadvise DONTNEED on those files only), as
after a power cut or reboot; by default they are cached, as after a plain kill -9.
--logs-only times just what a start does to the logs (LogManager, then every
partition opened) in a child process, leaving out interpreter start-up, imports
and the rest of the broker's start, which dominate and vary on a busy machine.
--kops-src runs the broker from another source tree (e.g. `git archive HEAD | tar -x
-C /tmp/kops-head`) for a before/after comparison. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kops.broker.runner import BrokerProcess

TOPIC = "restart-bench"
RECORD = 1024
_RECOVERED = re.compile(
    rf"{TOPIC}-\d+: unclean shutdown: re-validated (\d+) of (\d+) segments .* in ([\d.]+) s"
)


def produce(bootstrap: str, total_bytes: int, first: int = 0) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.kbytes": 262_144,
        }
    )
    payload = b"x" * RECORD
    errors: list[object] = []

    def report(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    for i in range(first, first + max(1, total_bytes // RECORD)):
        while True:
            try:
                producer.produce(TOPIC, payload, key=str(i).encode(), on_delivery=report)
                break
            except BufferError:
                producer.poll(0.005)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(300) == 0, "undelivered records"
    assert not errors, errors[:3]


# Opens every partition as Broker.start does; closes them only after a clean stop.
_OPEN_LOGS = """
import logging, sys, time
from pathlib import Path
from kops.broker.log import LogConfig, LogManager
logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
started = time.perf_counter()
mgr = LogManager(Path(sys.argv[1]))
for topic, partition in mgr.existing_partitions():
    mgr.open_partition(topic, partition, LogConfig(segment_bytes=int(sys.argv[2])))
print(time.perf_counter() - started)
if sys.argv[3] == "close":
    mgr.close()
"""


def evict(directory: Path) -> None:
    """Drop the files' pages from the page cache (written back first: DONTNEED keeps dirty ones)."""
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


class Bench:
    def __init__(self, work: Path, segment_bytes: int, *, cold: bool, logs_only: bool) -> None:
        self.data = work / "data"
        self.cold = cold
        self.logs_only = logs_only
        self.segment_bytes = segment_bytes
        self.log_path = work / "broker.log"
        self.log_file = self.log_path.open("a")
        self.broker = BrokerProcess(
            self.data,
            config={"log.segment.bytes": str(segment_bytes)},
            stderr=self.log_file.fileno(),
        )

    def timed_start(self, *, clean: bool = False) -> tuple[float, str, float | None]:
        """Seconds until the broker listens (or, with logs_only, its logs are open); what it
        said it re-validated, and in how long. With logs_only the broker is left stopped
        (cleanly if `clean`, else as if killed)."""
        if self.cold:
            evict(self.data)
        seen = self.log_path.stat().st_size  # only this start's lines
        started = time.perf_counter()
        if self.logs_only:
            then = "close" if clean else "crash"
            out = subprocess.run(
                [sys.executable, "-c", _OPEN_LOGS, str(self.data), str(self.segment_bytes), then],
                stdout=subprocess.PIPE,
                stderr=self.log_file,
                check=True,
                text=True,
            ).stdout
            elapsed = float(out)
            self.log_file.flush()
        else:
            self.broker.start(timeout=300)
            elapsed = time.perf_counter() - started
        found = _RECOVERED.findall(self.log_path.read_text(), seen)
        if not found:
            return elapsed, "-", None
        segments = f"{sum(int(f[0]) for f in found)}/{sum(int(f[1]) for f in found)}"
        return elapsed, segments, sum(float(f[2]) for f in found)

    def close(self) -> None:
        self.broker.stop()
        self.log_file.close()


def report(name: str, runs: list[tuple[float, str, float | None]], what: str) -> None:
    times = [t for t, _, _ in runs]
    segments = sorted({s for _, s, _ in runs})
    recovery = [r for _, _, r in runs if r is not None]
    took = f" in median {statistics.median(recovery):.3f} s" if recovery else ""
    print(
        f"{name:>11}: {what} median {statistics.median(times):6.3f} s "
        f"(min {min(times):6.3f}, max {max(times):6.3f}, {len(times)} runs)   "
        f"re-validated segments: {', '.join(segments)}{took}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="log size to fill (MB)")
    parser.add_argument("--segment-mb", type=int, default=1024, help="log.segment.bytes in MiB")
    parser.add_argument("--write-kb", type=int, default=1024, help="the kill-write write (KB)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to put the data (default: $TMPDIR)")
    parser.add_argument("--cold", action="store_true", help="evict the data from the page cache")
    parser.add_argument("--logs-only", action="store_true", help="time opening the logs only")
    parser.add_argument("--kops-src", default=None, help="run the broker from this source tree")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kops-restart-", dir=args.dir))
    if args.kops_src:
        # `python -m kops` looks in the working directory first, then PYTHONPATH.
        os.environ["PYTHONPATH"] = str(Path(args.kops_src).resolve())
        os.chdir(args.kops_src)
    bench = Bench(work, args.segment_mb << 20, cold=args.cold, logs_only=args.logs_only)
    try:
        bootstrap = bench.broker.start()
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(TOPIC, 1, 1)])[TOPIC].result(30)
        del admin  # or librdkafka keeps reconnecting to every restarted broker, noisily
        fill_started = time.perf_counter()
        produce(bootstrap, args.mb * 1_000_000)
        fill_s = time.perf_counter() - fill_started
        bench.broker.stop()
        segment_files = list((bench.data / f"{TOPIC}-0").glob("*.log"))
        print(
            f"log: {sum(p.stat().st_size for p in segment_files) / 1e6:.0f} MB in "
            f"{len(segment_files)} segment(s) of at most {args.segment_mb} MiB, "
            f"filled in {fill_s:.1f} s; page cache {'evicted' if args.cold else 'warm'}"
            + ("; timing the log open only" if args.logs_only else "")
            + (f"; broker from {args.kops_src}" if args.kops_src else ""),
            flush=True,
        )

        what = "logs open" if args.logs_only else "start"
        clean = []
        for _ in range(args.runs):
            clean.append(bench.timed_start(clean=True))
            bench.broker.stop()
        report("clean", clean, what)

        bench.broker.start()  # after the clean stop, so the recovery point is the LEO
        bench.broker.kill()
        idle = []
        for _ in range(args.runs):
            idle.append(bench.timed_start())
            bench.broker.kill()
        report("kill-idle", idle, what)

        written = []
        next_key = args.mb * 1_000_000 // RECORD
        for _ in range(args.runs):
            if bench.broker.exited() is not None:
                bench.broker.start()
            produce(bench.broker.bootstrap, args.write_kb * 1000, next_key)
            next_key += args.write_kb * 1000 // RECORD
            bench.broker.kill()
            written.append(bench.timed_start())
        report("kill-write", written, what)
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
