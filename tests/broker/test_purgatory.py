"""kops.broker.purgatory: delayed operations completed by a condition or a timeout."""

from __future__ import annotations

import asyncio

import pytest

from kops.broker.purgatory import DelayedOperation, Purgatory


class Counter(DelayedOperation):
    """Satisfied once `target` is reached; records how it ended."""

    def __init__(self, state: dict[str, int], target: int, delay: float) -> None:
        super().__init__(delay)
        self.state = state
        self.target = target
        self.checks = 0
        self.completions = 0
        self.expired = False

    def try_complete(self) -> bool:
        self.checks += 1
        if self.state["n"] >= self.target:
            return self.force_complete()
        return False

    def on_expiration(self) -> None:
        self.expired = True

    def on_complete(self) -> None:
        self.completions += 1


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_completes_at_once_when_satisfied() -> None:
    async def main() -> None:
        purgatory: Purgatory[str] = Purgatory("test")
        op = Counter({"n": 1}, 1, delay=10)
        assert purgatory.try_complete_else_watch(op, ["a"])
        assert op.is_completed and op.completions == 1 and not op.expired
        assert purgatory.watched("a") == 0

    run(main())


def test_an_event_on_a_watched_key_completes_it() -> None:
    async def main() -> None:
        purgatory: Purgatory[str] = Purgatory("test")
        state = {"n": 0}
        op = Counter(state, 2, delay=10)
        assert not purgatory.try_complete_else_watch(op, ["a", "b"])
        assert purgatory.watched("a") == purgatory.watched("b") == 1
        state["n"] = 1
        assert purgatory.check_and_complete("b") == 0  # re-checked, not satisfied yet
        assert not op.is_completed
        state["n"] = 2
        assert purgatory.check_and_complete("c") == 0  # not watched there
        assert purgatory.check_and_complete("a") == 1
        await op.wait()
        assert op.completions == 1 and not op.expired
        # Completion unwatches it from every key.
        assert purgatory.watched("a") == purgatory.watched("b") == 0
        assert purgatory.check_and_complete("b") == 0 and op.completions == 1

    run(main())


def test_expires_after_its_delay() -> None:
    async def main() -> None:
        purgatory: Purgatory[str] = Purgatory("test")
        op = Counter({"n": 0}, 1, delay=0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert not purgatory.try_complete_else_watch(op, ["a"])
        await asyncio.wait_for(op.wait(), 5)
        assert loop.time() - started >= 0.04
        assert op.expired and op.completions == 1
        assert purgatory.watched("a") == 0 and len(purgatory) == 0

    run(main())


def test_completes_exactly_once() -> None:
    async def main() -> None:
        purgatory: Purgatory[str] = Purgatory("test")
        state = {"n": 0}
        op = Counter(state, 1, delay=0.05)
        purgatory.try_complete_else_watch(op, ["a"])
        state["n"] = 1
        purgatory.check_and_complete("a")
        assert not op.force_complete()
        # A later timer of the same delay firing means the first one's time passed too.
        marker = Counter(state, 99, delay=0.05)
        purgatory.try_complete_else_watch(marker, ["b"])
        await marker.wait()
        assert marker.expired
        assert op.completions == 1 and not op.expired

    run(main())


def test_cancelling_the_waiter_drops_the_operation() -> None:
    async def main() -> None:
        purgatory: Purgatory[str] = Purgatory("test")
        op = Counter({"n": 0}, 1, delay=10)
        purgatory.try_complete_else_watch(op, ["a"])
        waiter = asyncio.create_task(op.wait())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert op.is_completed and op.completions == 0
        assert purgatory.watched("a") == 0

    run(main())


def test_cancel_all() -> None:
    async def main() -> None:
        purgatory: Purgatory[int] = Purgatory("test")
        ops = [Counter({"n": 0}, 1, delay=10) for _ in range(3)]
        for i, op in enumerate(ops):
            purgatory.try_complete_else_watch(op, [i, 99])
        assert len(purgatory) == 3 and purgatory.watched(99) == 3
        purgatory.cancel_all()
        assert len(purgatory) == 0
        assert all(op.is_completed and op.completions == 0 for op in ops)

    run(main())


def test_an_operation_completing_another_on_the_same_key() -> None:
    """on_complete may park a follow-up under the same key (a rebalance that
    has to keep waiting does); the pass that completed the first skips it."""

    async def main() -> None:
        purgatory: Purgatory[str] = Purgatory("test")
        state = {"n": 0}
        follow_up = Counter(state, 5, delay=10)

        class Chain(Counter):
            def on_complete(self) -> None:
                super().on_complete()
                purgatory.try_complete_else_watch(follow_up, ["a"])

        first = Chain(state, 1, delay=10)
        purgatory.try_complete_else_watch(first, ["a"])
        state["n"] = 1
        assert purgatory.check_and_complete("a") == 1
        assert first.completions == 1 and not follow_up.is_completed
        assert purgatory.watched("a") == 1
        state["n"] = 5
        assert purgatory.check_and_complete("a") == 1 and follow_up.completions == 1

    run(main())


def test_batched_events_recheck_once_on_the_next_loop_turn() -> None:
    async def main() -> None:
        purgatory: Purgatory[str] = Purgatory("test", batch_events=True)
        state = {"n": 0}
        op = Counter(state, 3, delay=10)
        purgatory.try_complete_else_watch(op, ["a", "b", "c"])
        checks = op.checks
        for key in ("a", "b", "c"):
            state["n"] += 1
            assert purgatory.check_and_complete(key) == 0
        # Nothing re-checked yet: all three events are seen by one check.
        assert op.checks == checks and not op.is_completed
        await asyncio.wait_for(op.wait(), 5)
        assert op.checks == checks + 1 and op.completions == 1 and not op.expired

    run(main())
