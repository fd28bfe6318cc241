"""Retries, time limits and the circuit breaker (docs/DESIGN.md §5) on every backend."""

from __future__ import annotations

import asyncio
from collections import Counter

from agents.agent import App
from agents.breaker import BreakerPolicy
from agents.context import Context
from agents.retry import RetryPolicy
from agents.worker import Worker
from blackboard.blackboard import Blackboard
from blackboard.records import Record, TopicPartition
from blackboard.status import read_status
from tests.contract.helpers import eventually
from tests.contract.test_processing import FAST, _results, _start
from tests.contract.types import Result, Task, registry

QUICK = RetryPolicy(max_attempts=3, backoff_ms=1, max_backoff_ms=5)


def _app(handler, **options) -> App:  # type: ignore[no-untyped-def]
    app = App("test", registry=registry)
    app.add(handler, consumes=Task, publishes=Result, name="flaky", **options)
    return app


def _dead(board: Blackboard) -> list[Record]:
    dlq = board.topics.dlq(board.topic(Task))
    if board.store.topic_partitions(dlq) is None:
        return []
    return [r for p in range(4) for r in board.store.read(TopicPartition(dlq, p), 0, 1000)]


def _headers(record: Record) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers if v is not None}


async def test_a_transient_failure_is_retried_and_its_output_committed_once(
    board: Blackboard,
) -> None:
    attempts: dict[int, list[int]] = {}

    async def handle(task: Task, ctx: Context) -> Result:
        attempts.setdefault(task.n, []).append(ctx.attempt)
        if task.n % 3 == 0 and ctx.attempt < 3:
            raise ConnectionError("model endpoint reset")
        return Result(n=task.n)

    worker = Worker(_app(handle, retry=QUICK, breaker=None), board, FAST)
    running = await _start(worker)
    board.publish_many([Task(n=i) for i in range(12)])
    await eventually(lambda: len(_results(board)) >= 12, what="12 results")
    worker.stop()
    await running
    assert sorted(r.n for r in _results(board)) == list(range(12))
    assert all(attempts[n] == [1, 2, 3] for n in range(0, 12, 3))
    assert all(attempts[n] == [1] for n in range(12) if n % 3)
    assert _dead(board) == []
    assert worker.runners[0].stats.retries == 8


async def test_exhausted_and_unretryable_failures_are_dead_lettered_with_their_attempts(
    board: Blackboard,
) -> None:
    calls: Counter[int] = Counter()

    async def handle(task: Task, ctx: Context) -> Result:
        calls[task.n] += 1
        if task.n == 1:
            raise RuntimeError("always broken")
        if task.n == 2:
            raise ValueError("bad input, retrying cannot help")
        return Result(n=task.n)

    policy = RetryPolicy(max_attempts=3, backoff_ms=1, max_backoff_ms=5, no_retry_on=(ValueError,))
    worker = Worker(_app(handle, retry=policy, breaker=None), board, FAST)
    running = await _start(worker)
    board.publish_many([Task(n=i) for i in range(5)])
    await eventually(
        lambda: len(_dead(board)) == 2 and len(_results(board)) == 3, what="2 dead, 3 done"
    )
    worker.stop()
    await running
    assert calls[1] == 3 and calls[2] == 1 and calls[0] == 1
    dead = {h["bb.dlq.exception.message"]: h for h in map(_headers, _dead(board))}
    broken, unretryable = dead["always broken"], dead["bad input, retrying cannot help"]
    assert broken["bb.dlq.stage"] == "process" and broken["bb.dlq.attempt"] == "3"
    assert unretryable["bb.dlq.attempt"] == "1"
    assert unretryable["bb.dlq.exception.class"] == "builtins.ValueError"
    assert float(broken["bb.dlq.first_failure_ts"]) > 0
    assert sum(row.lag for row in board.lag([board.topics.group("flaky")])) == 0


async def test_a_handler_over_its_time_limit_is_dead_lettered_as_timeout(
    board: Blackboard,
) -> None:
    async def handle(task: Task, ctx: Context) -> Result:
        if task.n == 1:
            await asyncio.sleep(30)
        return Result(n=task.n)

    policy = RetryPolicy(max_attempts=2, backoff_ms=1, max_backoff_ms=5, timeout_s=0.2)
    worker = Worker(_app(handle, retry=policy, breaker=None), board, FAST)
    running = await _start(worker)
    board.publish_many([Task(n=i) for i in range(3)])
    await eventually(lambda: len(_dead(board)) == 1 and len(_results(board)) == 2, what="timeout")
    worker.stop()
    await running
    headers = _headers(_dead(board)[0])
    assert headers["bb.dlq.stage"] == "timeout"
    assert headers["bb.dlq.attempt"] == "2"
    assert headers["bb.dlq.exception.class"] == "builtins.TimeoutError"


async def test_the_breaker_pauses_the_agent_while_a_dependency_is_down(board: Blackboard) -> None:
    down = True
    calls = 0

    async def handle(task: Task, ctx: Context) -> Result:
        nonlocal calls
        calls += 1
        if down:
            raise ConnectionError("vector store unreachable")
        return Result(n=task.n)

    # One record at a time: the first exhausts its 2 attempts (dead-lettered), the second's
    # first failure is the third in a row and opens the breaker; its retry then waits.
    breaker = BreakerPolicy(failures=3, cooldown_s=3.0)
    retry = RetryPolicy(max_attempts=2, backoff_ms=1, max_backoff_ms=5)
    worker = Worker(_app(handle, retry=retry, breaker=breaker, concurrency=1), board, FAST)
    running = await _start(worker)
    board.publish_many([Task(n=i) for i in range(20)], partition_key="one-key")

    def breaker_state() -> str:
        found = [s for s in read_status(board) if s.agent == "flaky"]
        return found[0].breaker if found else "unknown"

    await eventually(lambda: breaker_state() == "open", what="breaker open")
    assert calls == 3
    await asyncio.sleep(0.5)  # well inside the cool-down: nothing runs
    assert calls == 3
    down = False
    await eventually(lambda: len(_results(board)) >= 19, what="the rest processed")
    await eventually(lambda: breaker_state() == "closed", what="breaker closed")
    worker.stop()
    await running
    assert len(_dead(board)) == 1
    assert sorted(r.n for r in _results(board)) == list(range(1, 20))
    status = next(s for s in read_status(board) if s.agent == "flaky")
    assert status.opens == 1 and status.group == board.topics.group("flaky")
