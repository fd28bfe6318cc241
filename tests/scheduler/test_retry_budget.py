"""Retry budgets per (artifact type, tenant): the sliding window's arithmetic, and the runner
deferring retries beyond the budget — deterministic, on the embedded store in virtual time."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agents.agent import App
from agents.context import Context
from agents.retry import RetryPolicy
from agents.worker import Worker
from blackboard.artifacts import Envelope, TypeRegistry, artifact
from blackboard.errors import ConfigError
from blackboard.shell.sim.loop import run_virtual
from blackboard.shell.testing import TestBoard
from observability import tracing
from observability.runs import RunInfo
from scheduler import RetryBudget

reg = TypeRegistry()


@artifact("rb.Job", registry=reg)
class Job(BaseModel):
    n: int


@artifact("rb.Done", registry=reg)
class Done(BaseModel):
    n: int


def _env(tenant: str, type_: str = "rb.Job") -> Envelope:
    return Envelope("id", type_, 1, "c", tenant=tenant)


def test_budget_counts_per_type_and_tenant_over_a_sliding_window() -> None:
    budgets = RetryBudget(ratio=0.2, window_s=10.0, min_retries_per_s=0.1).tracker()  # floor 1
    a, b = _env("a"), _env("b")
    for _ in range(10):
        budgets.first_attempt(a, 0.0)
    # retries r may start while r <= 0.2 * (10 + r) + 1, i.e. r <= 3.75: three.
    assert [budgets.allow(a, 1.0) for _ in range(4)] == [True, True, True, False]
    assert budgets.allow(b, 1.0)  # another tenant: its own window (the floor allows one)
    assert budgets.allow(_env("a", "rb.Other"), 1.0)  # another type too
    # Later first attempts of a free the budget: with 20, r <= 0.2 * (20 + r) + 1: six.
    for _ in range(10):
        budgets.first_attempt(a, 2.0)
    assert [budgets.allow(a, 2.0) for _ in range(4)] == [True, True, True, False]
    # Once every call has left the window only the floor is left: r <= 0.2 * r + 1.
    assert [budgets.allow(a, 12.5) for _ in range(3)] == [True, False, False]
    budgets.forget_idle(100.0)
    assert not budgets._windows


def test_budget_values_are_checked() -> None:
    for bad in (
        {"ratio": 0.0},
        {"ratio": 1.0},
        {"window_s": 0.0},
        {"min_retries_per_s": 0.0},
    ):
        with pytest.raises(ConfigError):
            RetryBudget(**bad)


def test_tenant_always_failing_is_capped_while_others_run_and_deferred_retries_run_later(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = App(registry=reg)
    calls: list[tuple[str, int, float]] = []  # (tenant, attempt, virtual time)
    decisions: dict[tuple[int, int], str] = {}  # (n, attempt) -> bb.policy.decision
    shown = tracing.process

    def process(runner: Any, record: Any, env: Envelope, attempt: int, *rest: Any) -> Any:
        decisions[(json.loads(record.value)["n"], attempt)] = str(rest[1])
        return shown(runner, record, env, attempt, *rest)

    monkeypatch.setattr(tracing, "process", process)
    budget = RetryBudget(ratio=0.2, window_s=2.0, min_retries_per_s=0.5)  # floor 1 / window

    @app.agent(
        consumes=Job,
        publishes=Done,
        concurrency=2,
        breaker=None,
        retry=RetryPolicy(max_attempts=3, backoff_ms=0, max_backoff_ms=0, jitter="none"),
        retry_budget=budget,
    )
    async def worker(job: Job, ctx: Context) -> Done:
        calls.append((ctx.envelope.tenant, ctx.attempt, asyncio.get_running_loop().time()))
        if ctx.envelope.tenant == "a":
            raise RuntimeError("tenant a's dependency is down")
        return Done(n=job.n)

    tb = TestBoard(app, partitions=1)
    tb.board.ensure_topics(app.types())

    async def main() -> None:
        t0 = asyncio.get_running_loop().time()
        async with tb:
            for i in range(10):  # tenant a first: its retries must not hold b back
                tb.publish(Job(n=i), partition_key="k", tenant="a")
            for i in range(10):
                tb.publish(Job(n=100 + i), partition_key="k", tenant="b")
            await asyncio.sleep(1.0)
            runner = tb.worker.runners[0]
            a_retries = [c for c in calls if c[0] == "a" and c[1] > 1]
            b_calls = [c for c in calls if c[0] == "b"]
            # b: every record ran once, at once, while a's retries waited without a slot.
            assert len(b_calls) == 10 and all(t - t0 < 0.5 for _, _, t in b_calls)
            # a: 10 first attempts allow r <= 0.2 * (10 + r) + 1 retries: three.
            assert len(a_retries) == 3
            # Every a record now waits on a deferred retry (7 on their second attempt, the
            # three that retried on their third).
            assert runner.stats.retries_deferred == 10
            assert not tb.dead_letters(Job)  # deferred, not dead-lettered
            # Once the window moves on the deferred retries run (one per window: the floor).
            await tb.run_until_idle(timeout=30.0)
            assert len(tb.dead_letters(Job)) == 10
            assert {r.header("bb.dlq.attempt") for r in tb.dead_letters(Job)} == {b"3"}

    trace = tracing.start_tracing(tmp_path, RunInfo.create(scenario="budget"))  # the spans
    try:  # say when each attempt ran: the decisions are read off tracing.process
        run_virtual(main)
    finally:
        trace.stop()
    a_calls = [c for c in calls if c[0] == "a"]
    assert len(a_calls) == 30  # every record got all three attempts
    # Three retries at once, then (a's first attempts gone from the window) one per window.
    times = sorted(t for _, attempt, t in a_calls if attempt > 1)
    assert times[2] < 0.1 and all(b - a > 1.9 for a, b in itertools.pairwise(times[2:]))
    # At every retry, the retries of the window (20 slots of 0.1 s) stayed within the budget.
    for _, attempt, t in a_calls:
        if attempt == 1:
            continue
        slot = int(t // 0.1)
        window = [c for c in a_calls if int(c[2] // 0.1) > slot - 20 and c[2] <= t]
        retries = sum(1 for c in window if c[1] > 1)
        assert retries <= 0.2 * len(window) + 1 + 1e-9, (t, retries, len(window))
    deferred = [d for (n, attempt), d in decisions.items() if n < 100 and attempt > 1]
    shown_deferral = "deferred retry-budget type=rb.Job tenant=a ratio=0.2 waited="
    assert sum(d.startswith(shown_deferral) for d in deferred) == 17  # all but 3 were held
    assert all(d.startswith("admitted") for (n, _), d in decisions.items() if n >= 100)


def test_worker_budget_applies_to_agents_without_one() -> None:
    app = App(registry=reg)
    own = RetryBudget(ratio=0.5)

    @app.agent(consumes=Job, name="plain", breaker=None)
    async def plain(job: Job, ctx: Context) -> None:
        return None

    @app.agent(consumes=Job, name="picky", breaker=None, retry_budget=own)
    async def picky(job: Job, ctx: Context) -> None:
        return None

    tb = TestBoard(app)
    assert {r.spec.name: r.spec.retry_budget for r in tb.worker.runners} == {
        "plain": None,
        "picky": own,
    }
    default = RetryBudget(ratio=0.1)
    worker = Worker(app, tb.board, retry_budget=default)
    budgets = {r.spec.name: r.spec.retry_budget for r in worker.runners}
    assert budgets == {"plain": default, "picky": own}
    tb.board.close()


def test_resumed_retries_wait_for_a_free_slot_so_the_concurrency_cap_holds() -> None:
    app = App(registry=reg)
    running, most = 0, 0

    @app.agent(
        consumes=Job,
        publishes=Done,
        concurrency=2,
        breaker=None,
        retry=RetryPolicy(max_attempts=2, backoff_ms=0, max_backoff_ms=0, jitter="none"),
        retry_budget=RetryBudget(ratio=0.1, window_s=1.0, min_retries_per_s=1.0),
    )
    async def worker(job: Job, ctx: Context) -> Done:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(0.3)
            if ctx.envelope.tenant == "a":
                raise RuntimeError("tenant a's dependency is down")
            return Done(n=job.n)
        finally:
            running -= 1

    tb = TestBoard(app, partitions=1)
    tb.board.ensure_topics(app.types())

    async def main() -> None:
        async with tb:
            for i in range(8):
                tb.publish(Job(n=i), partition_key="k", tenant="a")
            for i in range(12):
                tb.publish(Job(n=100 + i), partition_key="k", tenant="b")
            await tb.run_until_idle(timeout=60.0)
            runner = tb.worker.runners[0]
            assert runner.stats.retries_deferred > 2  # retries were held, then resumed
            assert len(tb.dead_letters(Job)) == 8 and len(tb.artifacts(Done)) == 12

    run_virtual(main)
    assert most == 2  # never more handlers at once than the agent's concurrency
