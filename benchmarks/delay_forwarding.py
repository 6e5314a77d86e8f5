"""Delay queue: forwarding throughput and lateness p50/p99 per tier. A benchmark, not a test.

    .venv/bin/python benchmarks/delay_forwarding.py                    # 1,000 and 10,000 rec/s
    .venv/bin/python benchmarks/delay_forwarding.py --rates 2000 --seconds 10
    .venv/bin/python benchmarks/delay_forwarding.py --bootstrap HOST:PORT  # an existing cluster
    .venv/bin/python benchmarks/delay_forwarding.py --exactly-once on   # only transactional

By default every run is made twice in the same invocation, at-least-once and then with
``--exactly-once`` forwarders (new tiers, group and target each), and a last table puts the
two side by side: delivered rate, lateness p99 per delay, burst drain rate.

Set-up: the bundled broker in a child process (unless --bootstrap), the forwarders as
``kops delay worker`` in another child process (tiers 1s,2s,5s), and this process as load
generator and target consumer. For each offered rate, records are sent for --seconds with
delays cycling over 1s, 2s, 5s and 7.5s (7.5s cascades 5s -> 2s -> 1s). Reported per delay:
lateness measured by the target consumer (receive time - due time) p50/p99/max, and the
delivered rate; per tier, the lateness the forwarders themselves measured (from
``kops.delay.stats``). Then a burst: --burst records all due at the same moment, to measure
how fast one tier's forwarder drains a backlog.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict

from confluent_kafka import Consumer, Producer

from kops import admin
from kops.recipes import headers as h
from kops.recipes.delay import DelayTiers, ensure_tier_topics, send_delayed
from kops.recipes.delay.status import delay_status, percentiles

DELAYS = (1.0, 2.0, 5.0, 7.5)


def start_broker(data_dir: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kops", "broker", "start", "--listen", "127.0.0.1:0",
         "--data-dir", data_dir, "--log-level", "WARNING",
         "--config", "group.initial.rebalance.delay.ms=0"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = proc.stdout.readline()  # type: ignore[union-attr]
    m = re.search(r"listening on (\S+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"broker did not start: {line!r}")
    return proc, m.group(1)


def start_forwarders(
    bootstrap: str, tiers: DelayTiers, group: str, exactly_once: bool
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kops", "delay", "worker", "--tiers", tiers.describe(),
         "--template", tiers.template, "--group", group, "--stats-interval", "1s",
         "-v", "--instance-id", group,  # -v: the assignment lines waited for below
         *(["--exactly-once"] if exactly_once else [])],
        env={**os.environ, "KOPS_BOOTSTRAP": bootstrap},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    want = {f"tier {t}: assigned" for t in tiers.describe().split(",")}
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    for line in proc.stderr:  # type: ignore[union-attr]
        seen |= {w for w in want if w in line}
        if seen == want or time.monotonic() > deadline:
            break
    # Keep draining stderr so the child never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    return proc


class Collector:
    """Consumes the target topic; lateness (ms) by requested delay, and arrival times."""

    def __init__(self, bootstrap: str, topic: str):
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
             "auto.offset.reset": "latest", "fetch.wait.max.ms": 50,
             "isolation.level": "read_committed"}
        )  # fmt: skip
        self.consumer.subscribe([topic])
        self.lateness: dict[str, list[int]] = defaultdict(list)
        self.arrivals: list[float] = []
        self.by_delay: dict[str, list[float]] = defaultdict(list)
        self.early = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            # poll() returns at the first record; consume(n, timeout) would wait for n.
            first = self.consumer.poll(0.05)
            batch = [] if first is None else [first, *self.consumer.consume(1000, 0)]
            for m in batch:
                if m.error() is not None:
                    continue
                now = time.time()
                hdrs = m.headers()
                due = int(h.get(hdrs, h.DELAY_DUE_MS) or 0)
                delay = h.get(hdrs, "bench.delay") or "?"
                late = int(now * 1000) - due
                self.early += late < 0
                self.lateness[delay].append(late)
                self.arrivals.append(now)
                self.by_delay[delay].append(now)

    def reset(self) -> None:
        self.lateness.clear()
        self.arrivals.clear()
        self.by_delay.clear()
        self.early = 0

    def count(self) -> int:
        return len(self.arrivals)


def offered_run(
    bootstrap: str, tiers: DelayTiers, target: str, rate: int, seconds: float, col: Collector
) -> dict[str, object]:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    total = int(rate * seconds)
    col.reset()
    start = time.monotonic()
    for i in range(total):
        # Pace in 10 ms slices so the offered rate is steady.
        ahead = start + i / rate - time.monotonic()
        if ahead > 0.01:
            time.sleep(ahead)
        d = DELAYS[i % len(DELAYS)]
        while True:
            try:
                send_delayed(producer, target, b"x" * 100, delay=d, tiers=tiers,
                             headers=[("bench.delay", f"{d:g}s".encode())])  # fmt: skip
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    sent_for = time.monotonic() - start
    deadline = time.monotonic() + max(DELAYS) + 30
    while col.count() < total and time.monotonic() < deadline:
        time.sleep(0.1)
    print(f"\noffered {rate:,} rec/s for {seconds:g}s: sent {total:,} in {sent_for:.1f}s "
          f"({total / sent_for:,.0f} rec/s), delivered {col.count():,}, early {col.early}")  # fmt: skip
    # Each delay class arrives over its own window; their rates add up to the delivered rate.
    rate_sum = sum(
        len(times) / max(max(times) - min(times), 1e-9)
        for times in col.by_delay.values()
        if len(times) > 1
    )
    print(f"  delivered (forwarded to target) rate: {rate_sum:,.0f} rec/s")
    print(
        f"  {'delay':>6}  {'records':>8}  {'p50 ms':>7}  {'p99 ms':>7}  {'max ms':>7}  (target consumer)"
    )
    p99: dict[str, object] = {}
    for delay in sorted(col.lateness, key=lambda d: float(d.rstrip("s"))):
        pct = percentiles(col.lateness[delay])
        p99[delay] = pct["p99_ms"]
        print(f"  {delay:>6}  {len(col.lateness[delay]):>8,}  {pct['p50_ms']:>7}  "
              f"{pct['p99_ms']:>7}  {pct['max_ms']:>7}")  # fmt: skip
    return {"rate": rate_sum, "delivered": col.count(), "sent": total, "p99": p99}


def forwarder_view(bootstrap: str, tiers: DelayTiers, group: str) -> None:
    time.sleep(1.5)  # one more stats record
    print(f"  {'tier':>6}  {'delivered':>9}  {'cascaded':>8}  {'p50 ms':>7}  {'p99 ms':>7}  "
          "(forwarders' own measure, last 256 per tier)")  # fmt: skip
    for st in delay_status(bootstrap, tiers, group=group):
        print(f"  {st.tier:>6}  {st.delivered:>9,}  {st.cascaded:>8,}  "
              f"{st.lateness_p50_ms!s:>7}  {st.lateness_p99_ms!s:>7}")  # fmt: skip


def burst_run(
    bootstrap: str, tiers: DelayTiers, target: str, n: int, col: Collector
) -> dict[str, object]:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20}
    )
    col.reset()
    due_in = 6.0
    at = time.time() + due_in
    from datetime import UTC, datetime

    deliver_at = datetime.fromtimestamp(at, UTC)
    t0 = time.monotonic()
    for _ in range(n):
        while True:
            try:
                send_delayed(producer, target, b"x" * 100, deliver_at=deliver_at, tiers=tiers,
                             headers=[("bench.delay", b"burst")])  # fmt: skip
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)
    loaded = time.monotonic() - t0
    deadline = time.monotonic() + due_in + 60
    while col.count() < n and time.monotonic() < deadline:
        time.sleep(0.05)
    arrivals = sorted(col.arrivals)
    if not arrivals:
        print("\nburst: nothing delivered")
        return {}
    drain = arrivals[-1] - at
    pct = percentiles(col.lateness["burst"])
    print(f"\nburst: {n:,} records due at the same moment (loaded in {loaded:.1f}s, all via the "
          f"5s tier): delivered {len(arrivals):,}, early {col.early}; drained in {drain:.2f}s "
          f"after due = {len(arrivals) / max(drain, 1e-9):,.0f} rec/s; lateness p50 "
          f"{pct['p50_ms']} ms p99 {pct['p99_ms']} ms")  # fmt: skip
    return {"drain_rate": len(arrivals) / max(drain, 1e-9), "p99": pct["p99_ms"]}


def run_mode(bootstrap: str, args: argparse.Namespace, exactly_once: bool) -> dict[str, object]:
    """Every offered run and the burst against forwarders of one mode."""
    tag = uuid.uuid4().hex[:6]
    tiers = DelayTiers.parse("1s,2s,5s", template=f"bench{tag}.{{tier}}")
    group = f"bench-{tag}"
    target = f"bench-target-{tag}"
    admin.create_topic(bootstrap, target, 3)
    ensure_tier_topics(bootstrap, tiers)
    forwarders = start_forwarders(bootstrap, tiers, group, exactly_once)
    col = Collector(bootstrap, target)
    col.thread.start()
    time.sleep(2)  # the collector joins its group
    mode = "exactly_once" if exactly_once else "at-least-once"
    print(f"\n=== {mode}: tiers {tiers.describe()} (1 partition each); target 3 partitions")
    out: dict[str, object] = {}
    try:
        for rate in (int(r) for r in args.rates.split(",")):
            out[f"rate {rate}"] = offered_run(bootstrap, tiers, target, rate, args.seconds, col)
            forwarder_view(bootstrap, tiers, group)
        if args.burst:
            out["burst"] = burst_run(bootstrap, tiers, target, args.burst, col)
    finally:
        col.stop.set()
        col.thread.join(5)
        forwarders.terminate()
        forwarders.wait(30)
    return out


def compare(results: dict[str, dict[str, object]]) -> None:
    """One line per measure, one column per mode."""
    modes = list(results)
    print("\n=== side by side: " + " vs ".join(modes))
    keys = [k for k in results[modes[0]] if k != "burst"]
    for key in keys:
        runs = [results[m].get(key) or {} for m in modes]
        line = "  ".join(f"{r.get('rate', 0):>9,.0f}" for r in runs)  # type: ignore[union-attr]
        print(f"  offered {key[5:]:>6} rec/s: delivered rate {line}")
        delays = runs[0].get("p99", {})  # type: ignore[union-attr]
        for delay in delays:
            p99s = "  ".join(f"{r.get('p99', {}).get(delay)!s:>9}" for r in runs)  # type: ignore[union-attr]
            print(f"    lateness p99 ms, delay {delay:>5}: {p99s}")
    bursts = [results[m].get("burst") or {} for m in modes]
    if any(bursts):
        rates = "  ".join(f"{b.get('drain_rate', 0):>9,.0f}" for b in bursts)  # type: ignore[union-attr]
        p99s = "  ".join(f"{b.get('p99')!s:>9}" for b in bursts)  # type: ignore[union-attr]
        print(f"  burst drain rec/s:      {rates}")
        print(f"  burst lateness p99 ms:  {p99s}")


def main() -> None:
    p = argparse.ArgumentParser(description="Delay queue forwarding benchmark")
    p.add_argument("--bootstrap", default=None, help="use this cluster instead of a new broker")
    p.add_argument("--rates", default="1000,10000", help="offered rates, records/s")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each offered run")
    p.add_argument("--burst", type=int, default=20000, help="records in the burst run (0: skip)")
    p.add_argument(
        "--exactly-once", choices=("off", "on", "both"), default="both",
        help="forwarders at-least-once, transactional, or one run of each",
    )  # fmt: skip
    args = p.parse_args()

    broker = None
    tmp = tempfile.TemporaryDirectory(prefix="kops-delay-bench-")
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker, bootstrap = start_broker(tmp.name)
    print(f"broker {bootstrap}")
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.exactly_once]
    results: dict[str, dict[str, object]] = {}
    try:
        for exactly_once in modes:
            name = "exactly_once" if exactly_once else "at-least-once"
            results[name] = run_mode(bootstrap, args, exactly_once)
        if len(results) > 1:
            compare(results)
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(30)
        tmp.cleanup()


if __name__ == "__main__":
    main()
