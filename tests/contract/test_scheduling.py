"""Scheduling policies keep exactly-once on every store: a worker running ``drr+srpt`` is
killed mid-way, a new one finishes, and every input has exactly one output."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from agents.agent import App
from agents.context import Context
from agents.settings import RunnerSettings
from agents.worker import Worker
from blackboard.blackboard import Blackboard
from scheduler import Admission, Ledger, PolicySpec
from tests.contract.helpers import eventually
from tests.contract.types import Result, Task, registry

FAST = RunnerSettings(commit_interval_ms=5, idle_poll_s=0.05, shutdown_grace_s=5)


def _size(info: Admission, ledger: Ledger) -> float:
    return float(info.payload.n % 7)


async def test_a_policy_reorders_but_every_input_still_has_one_output(board: Blackboard) -> None:
    order: list[int] = []

    async def handle(task: Task, ctx: Context) -> Result:
        order.append(task.n)
        await asyncio.sleep(0.002)
        return Result(n=task.n, by=ctx.envelope.tenant)

    app = App("test", registry=registry)
    app.add(
        handle,
        consumes=Task,
        publishes=Result,
        name="sched",
        concurrency=2,
        policy=PolicySpec("drr+srpt", estimator=_size, weights={"gold": 2.0}),
    )
    board.ensure_topics(app.types())
    n = 60
    for i in range(n):
        board.publish(Task(n=i), tenant="gold" if i % 3 == 0 else "free")
    first = Worker(app, board, FAST)
    running = asyncio.create_task(first.run())
    await eventually(lambda: len(order) >= n // 3, what="a third handled")
    running.cancel()  # killed: no drain, no commit of what finished since the last commit
    with pytest.raises(asyncio.CancelledError):
        await running
    second = Worker(app, board, FAST)
    running = asyncio.create_task(second.run())

    def results() -> list[Result]:
        return [a.payload for a in board.read(Result)]  # type: ignore[misc]

    await eventually(lambda: len(results()) >= n, what="every result")
    second.stop()
    await running
    counts = Counter(r.n for r in results())
    assert sorted(counts) == list(range(n)) and set(counts.values()) == {1}
    assert sum(row.lag for row in board.lag([board.topics.group("sched")])) == 0
