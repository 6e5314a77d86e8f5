"""A deterministic simulator for the sans-io Raft core.

One ``random.Random(seed)`` drives everything: message delays, drops,
duplicates (and so reordering), partitions (symmetric and one-way), crashes in
the middle of an action list, restarts from what was durable, flush latency,
snapshots and client proposals. Time is a fake integer clock in ms.

Each node has a fake disk shaped like a real driver's: a mirror of the log
built only from the actions (``AppendEntries``/``TruncateLog``/...), a
``durable_end`` that moves on flush (truncations and snapshots are durable at
once), and the last persisted quorum state. A restart rebuilds the node from
exactly that.

Invariants are checked as actions are executed (so after every step) and in a
full sweep at every fault tick and at the end:

* election safety: one leader per epoch, ever;
* log matching: an (offset, epoch) pair always names the same entry with the
  same predecessor epoch, so equal pairs imply equal prefixes;
* committed entries never change: every entry any node applies is recorded; a
  node's applied stream and its log below its high watermark must agree with
  it; a new leader must hold all of it; it stays on a majority of durable
  disks (this catches acknowledging before flushing);
* each node's high watermark never moves backwards while it is up;
* liveness: after the faults heal, a leader commits a fresh proposal and every
  node catches up within a bounded simulated time.
"""

from __future__ import annotations

import heapq
import json
import os
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from kops.broker.cluster.raft.actions import (
    Action,
    AppendEntries,
    ApplyEntries,
    InstallSnapshot,
    PersistQuorumState,
    PersistSnapshot,
    RoleChanged,
    Send,
    TruncateLog,
)
from kops.broker.cluster.raft.core import NotLeaderError, RaftNode
from kops.broker.cluster.raft.log import MemoryLog
from kops.broker.cluster.raft.messages import Entry, Message
from kops.broker.cluster.raft.state import QuorumStateData, RaftConfig, Role

REPLAY_HINT = (
    "KOPS_RAFT_SEED={seed} .venv/bin/pytest tests/cluster/test_raft_sim.py -k replay -p no:xdist"
)


class InvariantViolation(AssertionError):
    pass


def encode_state(payloads: list[bytes]) -> bytes:
    return json.dumps([p.decode("latin-1") for p in payloads]).encode()


def decode_state(blob: bytes) -> list[bytes]:
    return [s.encode("latin-1") for s in json.loads(blob)]


@dataclass
class Profile:
    n_voters: int = 3
    n_observers: int = 0
    chaos_ms: int = 3000
    liveness_bound_ms: int = 6000
    min_delay_ms: int = 1
    max_delay_ms: int = 10
    long_delay_p: float = 0.03
    long_delay_ms: int = 400
    drop_p: float = 0.0
    dup_p: float = 0.02
    flush_max_ms: int = 5
    crash_mid_p: float = 0.02
    fault_every_ms: tuple[int, int] = (80, 400)
    propose_every_ms: tuple[int, int] = (10, 80)
    snapshots: bool = True
    election_timeout_ms: int = 500
    fetch_timeout_ms: int = 1000
    fetch_max_entries: int = 100

    @classmethod
    def random(cls, rng: random.Random) -> Profile:
        return cls(
            n_voters=rng.choice([1, 3, 3, 3, 5, 5]),
            n_observers=rng.choice([0, 0, 1]),
            flush_max_ms=rng.choice([0, 2, 10, 30]),
            drop_p=rng.choice([0.0, 0.0, 0.05, 0.2]),
            dup_p=rng.choice([0.0, 0.02, 0.1]),
            long_delay_p=rng.choice([0.0, 0.03, 0.1]),
            crash_mid_p=rng.choice([0.0, 0.02, 0.1]),
            snapshots=rng.random() < 0.5,
            chaos_ms=rng.randint(1500, 5000),
            fetch_max_entries=rng.choice([1, 2, 100]),
        )


@dataclass
class SimNode:
    id: int
    config: RaftConfig
    core: RaftNode | None = None
    # the fake disk
    qs: QuorumStateData | None = None
    mirror: MemoryLog = field(default_factory=MemoryLog)
    durable_end: int = 0
    # volatile driver state
    incarnation: int = 0
    applied: list[bytes] = field(default_factory=list)
    applied_offset: int = 0
    last_hw: int = 0
    flush_pending: bool = False
    tick_at: int = 2**62

    @property
    def up(self) -> bool:
        return self.core is not None


class Simulation:
    def __init__(self, seed: int, profile: Profile | None = None, *, trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.profile = profile or Profile.random(self.rng)
        p = self.profile
        self.now = 0
        self._seq = 0
        self._events: list[tuple[int, int, str, Any]] = []
        voters = frozenset(range(1, p.n_voters + 1))
        ids = list(range(1, p.n_voters + p.n_observers + 1))
        self.voters = voters
        self.nodes: dict[int, SimNode] = {}
        for i in ids:
            cfg = RaftConfig(
                i,
                voters,
                election_timeout_ms=p.election_timeout_ms,
                fetch_timeout_ms=p.fetch_timeout_ms,
                fetch_max_entries=p.fetch_max_entries,
            )
            self.nodes[i] = SimNode(i, cfg)
        self.blocked: set[tuple[int, int]] = set()
        self.drop_p = p.drop_p
        self.crash_mid_p = p.crash_mid_p
        self.trace_on = trace
        self.trace: deque[str] = deque(maxlen=100_000 if trace else 1)
        # global knowledge for invariants
        self.leaders: dict[int, int] = {}
        self.entry_index: dict[tuple[int, int], tuple[bytes, bool, int]] = {}
        self.committed: list[Entry] = []
        self.commit_epoch: list[int] = []  # lowest epoch in which each commit was seen
        self.proposed = 0
        self.steps = 0
        self._steps_now = 0
        for i in ids:
            self.restart(i)

    # --- plumbing ---------------------------------------------------------------

    def fail(self, what: str) -> None:
        tail = (
            "\n".join(list(self.trace)[-60:]) if self.trace_on else "(run the replay for a trace)"
        )
        raise InvariantViolation(
            f"seed {self.seed} at t={self.now}ms: {what}\n"
            f"reproduce: {REPLAY_HINT.format(seed=self.seed)}\nprofile: {self.profile}\n{tail}"
        )

    def log(self, msg: str) -> None:
        if self.trace_on:
            self.trace.append(f"{self.now:6d} {msg}")

    def _push(self, at: int, kind: str, data: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, data))

    def _schedule_tick(self, n: SimNode) -> None:
        if n.core is None:
            return
        d = max(n.core.next_deadline_ms(), self.now)
        if d < n.tick_at:
            n.tick_at = d
            self._push(d, "tick", (n.id, n.incarnation))

    # --- fault primitives ---------------------------------------------------------

    def crash(self, i: int) -> None:
        n = self.nodes[i]
        if n.core is None:
            return
        self.log(f"CRASH {i} (durable_end={n.durable_end}, mirror_end={n.mirror.end_offset})")
        n.core = None
        n.incarnation += 1
        n.flush_pending = False
        n.tick_at = 2**62

    def restart(self, i: int) -> None:
        n = self.nodes[i]
        if n.core is not None:
            return
        n.incarnation += 1
        snap = n.mirror.snapshot
        start = n.mirror.start_offset
        entries = n.mirror.read(start, max(start, n.durable_end))
        n.mirror = MemoryLog(entries, snapshot=snap)
        n.durable_end = n.mirror.end_offset
        core_log = MemoryLog(entries, snapshot=snap)
        n.core = RaftNode(
            n.config, rng=random.Random(self.rng.getrandbits(64)), log=core_log, quorum_state=n.qs
        )
        n.applied = decode_state(snap.state) if snap else []
        n.applied_offset = n.last_hw = start
        n.tick_at = 2**62
        self.log(f"RESTART {i} qs={n.qs} log=[{start},{n.durable_end})")
        self._execute(n, n.core.start(self.now))

    def partition(self, *groups: set[int]) -> None:
        """Symmetric partition: no traffic between different groups."""
        self.blocked = set()
        for a in self.nodes:
            for b in self.nodes:
                if a != b and not any(a in g and b in g for g in groups):
                    self.blocked.add((a, b))
        self.log(f"PARTITION {groups}")

    def block(self, src: int, dst: int) -> None:
        """One-way: messages from src to dst are lost."""
        self.blocked.add((src, dst))
        self.log(f"BLOCK {src}->{dst}")

    def heal_network(self) -> None:
        self.blocked = set()
        self.drop_p = 0.0
        self.log("HEAL network")

    def propose(self, i: int | None = None) -> tuple[int, bytes] | None:
        """Propose a fresh payload at node i (default: any live self-styled leader)."""
        cands = [i] if i is not None else [n.id for n in self.nodes.values() if n.up]
        for c in cands:
            n = self.nodes[c]
            if n.core is None or n.core.role is not Role.LEADER:
                continue
            self.proposed += 1
            payload = f"s{self.seed}-{self.proposed}".encode()
            try:
                prop = n.core.propose(payload, self.now)
            except NotLeaderError:
                continue
            self.log(f"PROPOSE at {c}: offset {prop.offset} epoch {prop.epoch}")
            self._execute(n, prop.actions)
            return prop.offset, payload
        return None

    def snapshot(self, i: int) -> None:
        n = self.nodes[i]
        if n.core is None or n.applied_offset <= n.core.log.start_offset:
            return
        self.log(f"SNAPSHOT {i} at {n.applied_offset}")
        self._execute(n, n.core.snapshot(n.applied_offset, encode_state(n.applied), self.now))

    def resign(self, i: int) -> None:
        n = self.nodes[i]
        if n.core is not None:
            self.log(f"RESIGN {i}")
            self._execute(n, n.core.resign(self.now))

    # --- the event loop ---------------------------------------------------------

    def run_until(self, t: int) -> None:
        while self._events and self._events[0][0] <= t:
            at, _, kind, data = heapq.heappop(self._events)
            if at > self.now:
                self.now = at
                self._steps_now = 0
            self._steps_now += 1
            if self._steps_now > 20_000:
                self.fail(f"busy loop: {self._steps_now} steps without the clock moving ({kind})")
            self._step(kind, data)
        self.now = max(self.now, t)

    def _step(self, kind: str, data: Any) -> None:
        self.steps += 1
        if kind == "deliver":
            src, dst, msg = data
            n = self.nodes[dst]
            if n.core is None or (src, dst) in self.blocked:
                return
            self.log(f"{src}->{dst} {msg}")
            self._execute(n, n.core.handle(src, msg, self.now))
        elif kind == "tick":
            i, inc = data
            n = self.nodes[i]
            if n.core is None or inc != n.incarnation or n.tick_at != self.now:
                return
            n.tick_at = 2**62
            self._execute(n, n.core.tick(self.now))
        elif kind == "flush":
            i, inc = data
            n = self.nodes[i]
            if n.core is None or inc != n.incarnation:
                return
            self._flush(n)
        elif kind == "call":
            data()

    def _flush(self, n: SimNode) -> None:
        assert n.core is not None
        n.flush_pending = False
        n.durable_end = n.mirror.end_offset
        self._execute(n, n.core.log_flushed(n.durable_end, self.now))

    def _send(self, src: int, dst: int, msg: Message) -> None:
        if (src, dst) in self.blocked:
            return
        p = self.profile
        copies = 2 if self.rng.random() < p.dup_p else 1
        for _ in range(copies):
            if self.drop_p and self.rng.random() < self.drop_p:
                continue
            if p.long_delay_p and self.rng.random() < p.long_delay_p:
                delay = self.rng.randint(p.max_delay_ms, p.long_delay_ms)
            else:
                delay = self.rng.randint(p.min_delay_ms, p.max_delay_ms)
            self._push(self.now + delay, "deliver", (src, dst, msg))

    def _execute(self, n: SimNode, actions: list[Action]) -> None:
        crash_at = -1
        if actions and self.crash_mid_p and self.rng.random() < self.crash_mid_p:
            crash_at = self.rng.randrange(len(actions))
        for k, a in enumerate(actions):
            if k == crash_at:
                self.crash(n.id)
                self._push(
                    self.now + self.rng.randint(1, 300), "call", lambda i=n.id: self.restart(i)
                )
                return
            self._do(n, a)
        core = n.core
        if core is None:
            return
        # per-step checks on this node
        hw = core.high_watermark
        if hw < n.last_hw:
            self.fail(f"node {n.id} high watermark went back {n.last_hw} -> {hw}")
        n.last_hw = hw
        if hw > core.log.end_offset and hw > core.log.start_offset:
            self.fail(f"node {n.id} hw {hw} beyond its log end {core.log.end_offset}")
        if n.mirror.end_offset != core.log.end_offset:
            self.fail(
                f"node {n.id}: actions describe log end {n.mirror.end_offset}, core has {core.log.end_offset}"
            )
        if n.flush_pending is False and n.mirror.end_offset > n.durable_end:
            n.flush_pending = True
            if self.profile.flush_max_ms == 0:
                self._flush(n)
            else:
                self._push(
                    self.now + self.rng.randint(0, self.profile.flush_max_ms),
                    "flush",
                    (n.id, n.incarnation),
                )
        self._schedule_tick(n)

    def _do(self, n: SimNode, a: Action) -> None:
        if isinstance(a, Send):
            self._send(n.id, a.dest, a.message)
        elif isinstance(a, PersistQuorumState):
            if n.qs is not None and a.state.leader_epoch < n.qs.leader_epoch:
                self.fail(f"node {n.id} persisted an older epoch {a.state} after {n.qs}")
            n.qs = a.state
        elif isinstance(a, AppendEntries):
            self._check_append(n, a.entries)
            n.mirror.append(a.entries)
        elif isinstance(a, TruncateLog):
            self.log(f"TRUNCATE {n.id} to {a.end_offset}")
            if a.end_offset < n.applied_offset:
                self.fail(
                    f"node {n.id} truncated to {a.end_offset}, below applied {n.applied_offset}"
                )
            n.mirror.truncate(a.end_offset)
            n.durable_end = min(n.durable_end, a.end_offset)
        elif isinstance(a, PersistSnapshot):
            n.mirror.drop_prefix(a.snapshot)
            n.durable_end = max(n.durable_end, a.snapshot.end_offset)
        elif isinstance(a, InstallSnapshot):
            s = a.snapshot
            self.log(f"INSTALL {n.id} snapshot {s.end_offset}/{s.epoch}")
            state = decode_state(s.state)
            if s.end_offset > len(self.committed):
                self.fail(
                    f"node {n.id} installed snapshot at {s.end_offset} beyond commits {len(self.committed)}"
                )
            expect = [e.payload for e in self.committed[: s.end_offset] if not e.control]
            if state != expect:
                self.fail(f"node {n.id} installed a snapshot whose state differs from the commits")
            n.mirror.reset_to_snapshot(s)
            n.durable_end = s.end_offset
            n.applied = state
            n.applied_offset = s.end_offset
        elif isinstance(a, ApplyEntries):
            self._check_apply(n, a)
        elif isinstance(a, RoleChanged):
            self.log(f"ROLE {n.id} {a.role.value} epoch={a.epoch} leader={a.leader_id}")
            if a.role is Role.LEADER:
                self._check_new_leader(n, a.epoch)

    # --- invariants ---------------------------------------------------------------

    def _check_append(self, n: SimNode, entries: tuple[Entry, ...]) -> None:
        if not entries:
            return
        prev = (
            n.mirror.epoch_at(entries[0].offset) if entries[0].offset <= n.mirror.end_offset else -1
        )
        for e in entries:
            key = (e.offset, e.epoch)
            seen = self.entry_index.get(key)
            if seen is None:
                self.entry_index[key] = (e.payload, e.control, prev)
            elif seen != (e.payload, e.control, prev):
                self.fail(
                    f"log matching: node {n.id} has {e} after epoch {prev}, others have {seen}"
                )
            prev = e.epoch

    def _check_apply(self, n: SimNode, a: ApplyEntries) -> None:
        if a.entries and a.entries[0].offset != n.applied_offset:
            self.fail(
                f"node {n.id} applies from {a.entries[0].offset}, applied up to {n.applied_offset}"
            )
        for e in a.entries:
            epoch = n.core.epoch if n.core is not None else 0
            if e.offset < len(self.committed):
                if self.committed[e.offset] != e:
                    self.fail(
                        f"node {n.id} commits {e}, but {self.committed[e.offset]} was committed"
                    )
                self.commit_epoch[e.offset] = min(self.commit_epoch[e.offset], epoch)
            elif e.offset == len(self.committed):
                self.committed.append(e)
                self.commit_epoch.append(epoch)
            else:
                self.fail(f"node {n.id} commits {e} leaving a gap after {len(self.committed)}")
            if not e.control:
                n.applied.append(e.payload)
        n.applied_offset = a.high_watermark

    def _check_new_leader(self, n: SimNode, epoch: int) -> None:
        other = self.leaders.get(epoch)
        if other is not None and other != n.id:
            self.fail(f"election safety: {other} and {n.id} both lead epoch {epoch}")
        self.leaders[epoch] = n.id
        assert n.core is not None
        log = n.core.log
        # Leader completeness: whatever was committed in an earlier epoch is in this log.
        # (A stale leader of an older epoch may lack later commits; it cannot commit.)
        need = len(self.committed)
        while need > 0 and self.commit_epoch[need - 1] >= epoch:
            need -= 1
        if log.end_offset < need:
            self.fail(
                f"leader completeness: new leader {n.id} (epoch {epoch}) log ends {log.end_offset} < {need} committed before"
            )
        for o in range(log.start_offset, need):
            if log.entry(o) != self.committed[o]:
                self.fail(
                    f"leader completeness: new leader {n.id} has {log.entry(o)} not {self.committed[o]}"
                )

    def check_all(self) -> None:
        """The full sweep: logs vs commits on live nodes, commits durable on a majority."""
        c = self.committed
        for n in self.nodes.values():
            core = n.core
            if core is None:
                continue
            log = core.log
            for o in range(log.start_offset, min(core.high_watermark, len(c), log.end_offset)):
                if log.entry(o) != c[o]:
                    self.fail(f"node {n.id} holds {log.entry(o)} below its hw, committed is {c[o]}")
        covered = []
        for v in sorted(self.voters):
            n = self.nodes[v]
            o = n.mirror.start_offset
            end = min(n.durable_end, len(c))
            while o < end and n.mirror.entry(o) == c[o]:
                o += 1
            covered.append(o)
        covered.sort(reverse=True)
        majority = len(self.voters) // 2 + 1
        if covered[majority - 1] < len(c):
            self.fail(f"committed entries up to {len(c)} are durable only on a minority: {covered}")

    # --- scenarios ------------------------------------------------------------------

    def live_leader(self) -> SimNode | None:
        best: SimNode | None = None
        best_epoch = -1
        for n in self.nodes.values():
            if n.core is not None and n.core.role is Role.LEADER and n.core.epoch > best_epoch:
                best, best_epoch = n, n.core.epoch
        return best

    def random_fault(self) -> None:
        rng = self.rng
        ids = sorted(self.nodes)
        r = rng.random()
        if r < 0.25:
            leader = self.live_leader()
            i = leader.id if leader is not None and rng.random() < 0.5 else rng.choice(ids)
            self.crash(i)
            self._push(self.now + rng.randint(20, 1500), "call", lambda i=i: self.restart(i))
        elif r < 0.40:
            k = rng.randint(1, max(1, len(ids) - 1))
            side = set(rng.sample(ids, k))
            self.partition(side, set(ids) - side)
        elif r < 0.50:
            a, b = rng.sample(ids, 2) if len(ids) > 1 else (ids[0], ids[0])
            if a != b:
                self.block(a, b)
        elif r < 0.65:
            self.heal_network()
            self.drop_p = rng.choice([0.0, self.profile.drop_p])
        elif r < 0.75:
            leader = self.live_leader()
            if leader is not None:
                self.resign(leader.id)
                if rng.random() < 0.5:  # a clean shutdown: resign, then stop
                    i = leader.id
                    self._push(self.now + rng.randint(0, 20), "call", lambda i=i: self.crash(i))
                    self._push(
                        self.now + rng.randint(100, 1000), "call", lambda i=i: self.restart(i)
                    )
        elif r < 0.85 and self.profile.snapshots:
            self.snapshot(rng.choice(ids))
        self.check_all()

    def run_random(self) -> None:
        """Chaos for ``chaos_ms``, then heal and demand progress within ``liveness_bound_ms``."""
        p = self.profile
        rng = self.rng
        t_fault = rng.randint(*p.fault_every_ms)
        t_prop = rng.randint(*p.propose_every_ms)
        while self.now < p.chaos_ms:
            t = min(t_fault, t_prop, p.chaos_ms)
            self.run_until(t)
            if self.now >= t_fault:
                self.random_fault()
                t_fault = self.now + rng.randint(*p.fault_every_ms)
            if self.now >= t_prop:
                self.propose()
                t_prop = self.now + rng.randint(*p.propose_every_ms)
        self.heal_and_check_liveness()

    def heal_and_check_liveness(self) -> None:
        p = self.profile
        # stop the chaos: no scheduled crashes/restarts, no mid-action crashes, no loss
        self._events = [e for e in self._events if e[2] != "call"]
        heapq.heapify(self._events)
        self.crash_mid_p = 0.0
        self.heal_network()
        for i in sorted(self.nodes):
            self.restart(i)
        healed_at = self.now
        deadline = healed_at + p.liveness_bound_ms
        probe: tuple[int, int, bytes] | None = None  # (leader id, leader epoch, payload)
        probe_offset = -1
        committed = False
        while self.now < deadline:
            self.run_until(self.now + 20)
            if not committed:
                leader = self.live_leader()
                if leader is None or leader.core is None:
                    continue
                if probe is None or probe[:2] != (leader.id, leader.core.epoch):
                    proposed = self.propose(leader.id)
                    if proposed is not None:
                        probe_offset, payload = proposed
                        probe = (leader.id, leader.core.epoch, payload)
                elif len(self.committed) > probe_offset:
                    committed = self.committed[probe_offset].payload == probe[2]
            else:
                target = len(self.committed)
                if all(
                    n.core is not None and n.core.high_watermark >= target
                    for n in self.nodes.values()
                ):
                    self.check_all()
                    return
        self.check_all()
        state = {
            i: (n.core.role.value, n.core.epoch, n.core.high_watermark)
            for i, n in self.nodes.items()
            if n.core is not None
        }
        what = "no proposal committed" if not committed else "nodes did not catch up"
        self.fail(
            f"liveness: {what} within {p.liveness_bound_ms}ms of healing at {healed_at}; nodes {state}"
        )


def replay_seed() -> int | None:
    v = os.environ.get("KOPS_RAFT_SEED")
    return int(v) if v else None
