"""The runner takes records from the policy's ready queue: order, exactly-once, rate limits."""

from __future__ import annotations

import time

from pydantic import BaseModel

from agents.agent import App
from agents.context import Context
from agents.worker import Worker
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.shell.testing import FAST_SETTINGS, TestBoard
from scheduler import Admission, Ledger, PolicySpec, RateLimit

reg = TypeRegistry()


@artifact("s.Job", registry=reg)
class Job(BaseModel):
    n: int
    work: float


@artifact("s.Done", registry=reg)
class Done(BaseModel):
    n: int


def by_work(info: Admission, ledger: Ledger) -> float:
    return float(info.payload.work)


async def test_srpt_agent_runs_a_backlog_shortest_first_exactly_once() -> None:
    app = App(registry=reg)
    order: list[int] = []

    @app.agent(
        consumes=Job, publishes=Done, concurrency=1, policy=PolicySpec("srpt", estimator=by_work)
    )
    async def worker(job: Job, ctx: Context) -> Done:
        order.append(job.n)
        return Done(n=job.n)

    works = [float(w) for w in (9, 3, 7, 1, 5, 2, 8)]
    tb = TestBoard(app, partitions=1)
    tb.board.ensure_topics(app.types())
    for i, w in enumerate(works):
        tb.publish(Job(n=i, work=w), partition_key="k")  # before the worker joins
    async with tb:
        await tb.run_until_idle()
        assert sorted(a.payload.n for a in tb.artifacts(Done)) == list(range(len(works)))
        assert tb.lag() == 0
    assert order == sorted(range(len(works)), key=lambda n: works[n])
    assert tb.worker.runners[0].stats.deferred > 0  # records overtaken by shorter ones


async def test_worker_default_policy_and_drr_across_tenants() -> None:
    app = App(registry=reg)
    order: list[str] = []

    @app.agent(consumes=Job, publishes=Done, concurrency=1)
    async def worker(job: Job, ctx: Context) -> Done:
        order.append(ctx.envelope.tenant)
        return Done(n=job.n)

    tb = TestBoard(app, partitions=1)
    assert tb.worker.runners[0].policy.name == "fifo"  # no policy named anywhere
    assert PolicySpec("drr").charge == "time"  # the default: shares of handler time
    # These handlers take microseconds (their times are noise): compare shares of records.
    tb.worker = Worker(app, tb.board, FAST_SETTINGS, policy=PolicySpec("drr", charge="records"))
    assert tb.worker.runners[0].policy.name == "drr"
    tb.board.ensure_topics(app.types())
    for i in range(20):
        tb.publish(Job(n=i, work=1.0), partition_key="k", tenant="noisy")
    for i in range(4):
        tb.publish(Job(n=100 + i, work=1.0), partition_key="k", tenant="quiet")
    async with tb:
        await tb.run_until_idle()
    # Round robin: the quiet tenant's four records are among the first nine, not the last four.
    assert order[:9].count("quiet") == 4


async def test_requests_per_second_limit_spaces_handler_calls() -> None:
    app = App(registry=reg)
    starts: list[float] = []

    @app.agent(
        consumes=Job,
        publishes=Done,
        concurrency=8,
        rate_limit=RateLimit(requests_per_s=100.0, burst_s=0.01),
    )
    async def worker(job: Job, ctx: Context) -> Done:
        starts.append(time.monotonic())
        return Done(n=job.n)

    async with TestBoard(app, partitions=2) as tb:
        for i in range(30):
            tb.publish(Job(n=i, work=1.0))
        await tb.run_until_idle()
        assert len(tb.artifacts(Done)) == 30
    assert starts[-1] - starts[0] >= 0.27  # 29 intervals of 10 ms, one token banked


async def test_tokens_reported_by_handlers_are_rate_limited() -> None:
    app = App(registry=reg)
    starts: list[float] = []

    @app.agent(
        consumes=Job,
        publishes=Done,
        concurrency=8,
        rate_limit=RateLimit(tokens_per_s=1000.0, burst_s=0.1),
    )
    async def worker(job: Job, ctx: Context) -> Done:
        starts.append(time.monotonic())
        ctx.report_tokens(50)
        return Done(n=job.n)

    async with TestBoard(app, partitions=1) as tb:
        for i in range(10):
            tb.publish(Job(n=i, work=1.0))
        await tb.run_until_idle()
    # 500 tokens at 1000/s with 100 banked: at least ~0.35 s between the first and last call.
    assert starts[-1] - starts[0] >= 0.3


async def test_retries_are_calls_too_and_wait_for_the_rate_limit() -> None:
    from agents.retry import RetryPolicy

    app = App(registry=reg)
    calls: list[float] = []

    @app.agent(
        consumes=Job,
        concurrency=4,
        breaker=None,
        rate_limit=RateLimit(requests_per_s=10.0, burst_s=0.1),  # one call per 0.1 s
        retry=RetryPolicy(max_attempts=4, backoff_ms=0, max_backoff_ms=0, jitter="none"),
    )
    async def flaky(job: Job, ctx: Context) -> None:
        calls.append(time.monotonic())
        raise RuntimeError("down")

    async with TestBoard(app, partitions=1) as tb:
        tb.publish(Job(n=1, work=0.0))
        await tb.run_until_idle()
    assert len(calls) == 4
    # Four calls at 10/s with one banked: ~0.3 s from the first to the last, not at once.
    assert calls[-1] - calls[0] >= 0.25
