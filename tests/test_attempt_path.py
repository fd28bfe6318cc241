"""One attempt path (issue 15): a batch released by its window and a join's ``on_timeout``
get the same retries, time limit, breaker, rate limit and retry budget as a record's call.
Each of these failed before the timers' calls went through :class:`agents.attempt.Attempts`
(they ran once, unguarded)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from agents.agent import App
from agents.breaker import BreakerPolicy
from agents.clock import ManualClock
from agents.collected import Batch, JoinSet
from agents.context import Context
from agents.retry import RetryPolicy
from agents.worker import Worker
from blackboard.blackboard import Blackboard
from blackboard.deadletters import DeadLetters
from scheduler.ratelimit import RateLimit
from scheduler.retrybudget import RetryBudget
from tests.contract.helpers import eventually
from tests.contract.test_processing import FAST, _start
from tests.contract.types import Doc, Result, Tally, Task, Vote, registry

QUICK_RETRY = RetryPolicy(max_attempts=3, backoff_ms=1, max_backoff_ms=1)


def _results(board: Blackboard) -> list[Result]:
    return [a.payload for a in board.read(Result)]  # type: ignore[misc]


async def _held(board: Blackboard, group: str) -> None:
    """Wait until the group committed everything published (the records are held)."""
    await eventually(
        lambda: (
            sum(r.lag for r in board.lag([board.topics.group(group)])) == 0
            and bool(board.lag([board.topics.group(group)]))
        ),
        what="records held",
    )


def _windowed(app: App, handler: object, **options: object) -> None:
    """A batch agent whose batches (one per task) are only ever released by their window."""
    app.batch(
        consumes=Task,
        publishes=Result,
        max_records=100,
        max_wait_ms=1000,
        key=lambda task, env: str(task.n),
        name="summer",
        **options,  # type: ignore[arg-type]
    )(handler)  # type: ignore[arg-type]


async def test_a_batch_released_by_its_window_that_fails_once_is_retried() -> None:
    calls: Counter[str] = Counter()

    async def summer(batch: Batch[Task], ctx: Context) -> Result:
        calls[str(ctx.attempt)] += 1
        if ctx.attempt == 1:
            raise RuntimeError("the model timed out")
        return Result(n=sum(t.n for t in batch), by=str(ctx.attempt))

    app = App("test", registry=registry)
    _windowed(app, summer, retry=QUICK_RETRY)
    clock = ManualClock()
    with Blackboard("memory://", registry=registry) as board:
        worker = Worker(app, board, FAST, clock=clock)
        running = await _start(worker)
        board.publish_many([Task(n=1), Task(n=1)], partition_key="1")
        await _held(board, "summer")
        clock.advance(2)
        await eventually(lambda: len(_results(board)) == 1, what="the retried batch")
        await _held(board, "summer")
        worker.stop()
        await running
        assert [(r.n, r.by) for r in _results(board)] == [(2, "2")]
        assert calls == Counter({"1": 1, "2": 1})
        assert DeadLetters(board).entries() == []


async def test_a_join_timeout_handler_that_fails_once_is_retried() -> None:
    tries: list[int] = []

    async def on_timeout(parts: JoinSet, ctx: Context) -> Tally:
        tries.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("the judge model is away")
        return Tally(n=parts[Doc][0].n, voters=[], complete=False)

    async def tally(parts: JoinSet, ctx: Context) -> Tally:
        return Tally(n=parts[Doc][0].n, voters=[v.voter for v in parts[Vote]])

    app = App("test", registry=registry)
    app.join(
        consumes={Doc: 1, Vote: 1},
        publishes=Tally,
        timeout_s=5,
        on_timeout=on_timeout,
        retry=QUICK_RETRY,
    )(tally)
    clock = ManualClock()
    with Blackboard("memory://", registry=registry) as board:
        worker = Worker(app, board, FAST, clock=clock)
        running = await _start(worker)
        board.publish(Doc(n=4))
        await _held(board, "tally")
        clock.advance(6)
        await eventually(lambda: len(list(board.read(Tally))) == 1, what="the timed-out join")
        await _held(board, "tally")
        worker.stop()
        await running
        [timed_out] = [a.payload for a in board.read(Tally)]
        assert (timed_out.n, timed_out.complete) == (4, False)  # type: ignore[attr-defined]
        assert tries == [1, 2]
        assert DeadLetters(board).entries() == []


async def test_a_window_released_call_over_its_time_limit_is_a_timeout_for_every_part() -> None:
    async def summer(batch: Batch[Task], ctx: Context) -> Result:
        await asyncio.sleep(5)
        return Result(n=0)

    app = App("test", registry=registry)
    _windowed(app, summer, retry=RetryPolicy(max_attempts=2, backoff_ms=1, timeout_s=0.05))
    clock = ManualClock()
    with Blackboard("memory://", registry=registry) as board:
        worker = Worker(app, board, FAST, clock=clock)
        running = await _start(worker)
        board.publish_many([Task(n=7), Task(n=7)], partition_key="7")
        await _held(board, "summer")
        clock.advance(2)
        dlq = DeadLetters(board)
        await eventually(lambda: len(dlq.entries()) == 2, what="both parts dead-lettered")
        worker.stop()
        await running
        entries = dlq.entries()
        assert {e.stage for e in entries} == {"timeout"}
        assert {e.header("bb.dlq.attempt") for e in entries} == {"2"}  # both attempts ran
        assert _results(board) == []


async def test_window_released_calls_wait_for_the_rate_limit() -> None:
    started: list[float] = []

    async def summer(batch: Batch[Task], ctx: Context) -> Result:
        started.append(time.monotonic())
        return Result(n=next(iter(batch)).n)

    app = App("test", registry=registry)
    # 4 calls/s, one at a time banked: four calls need at least 0.75 s.
    _windowed(app, summer, rate_limit=RateLimit(requests_per_s=4, burst_s=0.25))
    clock = ManualClock()
    with Blackboard("memory://", registry=registry) as board:
        worker = Worker(app, board, FAST, clock=clock)
        running = await _start(worker)
        for n in range(4):
            board.publish(Task(n=n), partition_key=str(n))
        await _held(board, "summer")
        clock.advance(2)  # every batch's window closes at once
        await eventually(lambda: len(_results(board)) == 4, what="four batches")
        worker.stop()
        await running
        assert len(started) == 4
        assert max(started) - min(started) >= 0.6, [round(t - started[0], 3) for t in started]


async def test_failing_window_released_calls_open_the_breaker() -> None:
    async def summer(batch: Batch[Task], ctx: Context) -> Result:
        raise RuntimeError("the dependency is down")

    app = App("test", registry=registry)
    _windowed(
        app,
        summer,
        retry=RetryPolicy(max_attempts=1),
        breaker=BreakerPolicy(failures=3, cooldown_s=30),
    )
    clock = ManualClock()
    with Blackboard("memory://", registry=registry) as board:
        worker = Worker(app, board, FAST, clock=clock)
        running = await _start(worker)
        for n in range(5):
            board.publish(Task(n=n), partition_key=str(n))
        await _held(board, "summer")
        clock.advance(2)
        dlq = DeadLetters(board)
        await eventually(lambda: len(dlq.entries()) == 3, what="three failed calls")
        breaker = worker.runners[0]._breaker
        assert breaker is not None
        await eventually(lambda: breaker.opens == 1, what="the breaker open")
        await asyncio.sleep(0.3)  # several timer checks: the open circuit holds the other two
        assert len(dlq.entries()) == 3
        worker.stop()
        await running


async def test_a_window_released_retry_waits_for_the_retry_budget() -> None:
    async def summer(batch: Batch[Task], ctx: Context) -> Result:
        raise RuntimeError("always")

    app = App("test", registry=registry)
    _windowed(
        app,
        summer,
        retry=QUICK_RETRY,
        retry_budget=RetryBudget(ratio=0.01, window_s=60, min_retries_per_s=0.0001),
    )
    clock = ManualClock()
    with Blackboard("memory://", registry=registry) as board:
        worker = Worker(app, board, FAST, clock=clock)
        running = await _start(worker)
        board.publish(Task(n=1), partition_key="1")
        await _held(board, "summer")
        clock.advance(2)
        runner = worker.runners[0]
        await eventually(lambda: runner.stats.retries_deferred == 1, what="a deferred retry")
        worker.stop()
        await running
        # Left unfinished by the stop: not dead-lettered, read again by the next owner.
        assert DeadLetters(board).entries() == []


async def test_window_released_calls_keep_to_the_agents_concurrency() -> None:
    running, most = 0, 0

    async def summer(batch: Batch[Task], ctx: Context) -> Result:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1
        return Result(n=next(iter(batch)).n)

    app = App("test", registry=registry)
    _windowed(app, summer, concurrency=1)
    clock = ManualClock()
    with Blackboard("memory://", registry=registry) as board:
        worker = Worker(app, board, FAST, clock=clock)
        running_task = await _start(worker)
        for n in range(4):
            board.publish(Task(n=n), partition_key=str(n))
        await _held(board, "summer")
        clock.advance(2)  # four windows close at once; one call at a time may run
        await eventually(lambda: len(_results(board)) == 4, what="four batches")
        worker.stop()
        await running_task
    assert most == 1
