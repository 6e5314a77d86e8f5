"""Seeded deterministic simulations of the Raft core (see tests/cluster/raft_sim.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cluster.raft_sim import Profile, Simulation, replay_seed

CHUNK = 100
DEFAULT_SEEDS = 10_000
SLOW_SEEDS = 50_000


def run_seed(seed: int, *, trace: bool = False) -> Simulation:
    sim = Simulation(seed, trace=trace)
    sim.run_random()
    return sim


@pytest.mark.parametrize("chunk", range(DEFAULT_SEEDS // CHUNK))
def test_random_seeds(chunk: int) -> None:
    for seed in range(chunk * CHUNK, (chunk + 1) * CHUNK):
        run_seed(seed)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(DEFAULT_SEEDS // CHUNK, SLOW_SEEDS // CHUNK))
def test_random_seeds_slow(chunk: int) -> None:
    for seed in range(chunk * CHUNK, (chunk + 1) * CHUNK):
        run_seed(seed)


def test_replay() -> None:
    """Re-run one seed with a full trace: KOPS_RAFT_SEED=<n> pytest ... -k replay."""
    seed = replay_seed()
    if seed is None:
        pytest.skip("set KOPS_RAFT_SEED to replay one seed")
    sim = run_seed(seed, trace=True)
    print(f"seed {seed}: {sim.steps} steps, {len(sim.committed)} committed, profile {sim.profile}")


_op = st.one_of(
    st.tuples(st.just("crash"), st.integers(1, 5)),
    st.tuples(st.just("restart"), st.integers(1, 5)),
    st.tuples(st.just("partition"), st.sets(st.integers(1, 5), min_size=1, max_size=4)),
    st.tuples(st.just("block"), st.tuples(st.integers(1, 5), st.integers(1, 5))),
    st.tuples(st.just("heal"), st.none()),
    st.tuples(st.just("resign"), st.none()),
    st.tuples(st.just("snapshot"), st.integers(1, 5)),
    st.tuples(st.just("propose"), st.integers(1, 5)),
    st.tuples(st.just("wait"), st.integers(1, 1500)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.sampled_from([3, 5]), st.lists(_op, max_size=40))
def test_hypothesis_fault_schedules(seed: int, voters: int, ops: list[tuple[str, Any]]) -> None:
    """Hypothesis picks the fault schedule (and shrinks it on failure); invariants and liveness hold."""
    sim = Simulation(seed, Profile(n_voters=voters, crash_mid_p=0.05, fetch_max_entries=2))
    ids = sorted(sim.nodes)
    for kind, arg in ops:
        if kind == "crash":
            sim.crash(ids[arg % len(ids)])
        elif kind == "restart":
            sim.restart(ids[arg % len(ids)])
        elif kind == "partition":
            side = {ids[i % len(ids)] for i in arg}
            sim.partition(side, set(ids) - side)
        elif kind == "block" and arg[0] != arg[1]:
            sim.block(ids[arg[0] % len(ids)], ids[arg[1] % len(ids)])
        elif kind == "heal":
            sim.heal_network()
        elif kind == "resign" and (leader := sim.live_leader()) is not None:
            sim.resign(leader.id)
        elif kind == "snapshot":
            sim.snapshot(ids[arg % len(ids)])
        elif kind == "propose":
            for _ in range(arg):
                sim.propose()
        elif kind == "wait":
            sim.run_until(sim.now + arg)
        sim.check_all()
    sim.heal_and_check_liveness()
