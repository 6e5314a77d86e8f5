"""Load tests and the partition-count sweep.

- `load`: produce and consume benchmarks (`kops bench produce/consume`);
- `sweep`: runs them over partition counts and recommends one (`kops bench sweep`).
"""

from kops.recipes.bench.load import (
    MB,
    BenchResult,
    LatencyStats,
    Progress,
    bench_consume,
    bench_produce,
)

__all__ = ["MB", "BenchResult", "LatencyStats", "Progress", "bench_consume", "bench_produce"]
