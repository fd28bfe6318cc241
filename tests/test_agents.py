"""The agent API and the testing helper."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from agents.agent import App
from agents.context import Context
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.errors import AgentError
from blackboard.shell.testing import TestBoard

reg = TypeRegistry()


@artifact("a.Question", registry=reg)
class Question(BaseModel):
    text: str


@artifact("a.Answer", registry=reg)
class Answer(BaseModel):
    text: str


def test_agent_definitions_are_checked() -> None:
    app = App(registry=reg)

    def sync_handler(q: Question, ctx: Context) -> None: ...

    with pytest.raises(AgentError, match="async"):
        app.add(sync_handler, consumes=Question)  # type: ignore[arg-type]

    async def ok(q: Question, ctx: Context) -> None: ...

    app.add(ok, consumes=Question)
    with pytest.raises(AgentError, match="already"):
        app.add(ok, consumes=Question)
    with pytest.raises(AgentError, match="name"):
        app.add(ok, consumes=Question, name="bad name")


async def test_outputs_inherit_correlation_and_cause_and_respect_the_concurrency_cap() -> None:
    app = App(registry=reg)
    running = 0
    peak = 0

    @app.agent(consumes=Question, publishes=Answer, concurrency=3)
    async def answerer(q: Question, ctx: Context) -> list[Answer]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        ctx.publish(Answer(text=q.text + "!"))
        return [Answer(text=q.text + "?")]

    async with TestBoard(app) as tb:
        envs = [tb.publish(Question(text=f"q{i}"), tenant="acme") for i in range(12)]
        await tb.run_until_idle()
        answers = tb.artifacts(Answer)
    assert peak == 3
    assert len(answers) == 24
    by_cause = {e.id: e for e in envs}
    for ans in answers:
        cause = by_cause[ans.envelope.causation_ids[0]]
        assert ans.envelope.correlation_id == cause.correlation_id
        assert ans.envelope.partition_key == cause.partition_key
        assert ans.envelope.tenant == "acme"
        assert ans.envelope.produced_by == "answerer"
    texts = sorted(a.payload.text for a in answers)
    assert texts[:2] == ["q0!", "q0?"]


async def test_state_needs_an_ordered_agent() -> None:
    app = App(registry=reg)

    @app.agent(consumes=Question, publishes=Answer)
    async def stateful(q: Question, ctx: Context) -> None:
        ctx.state.set("k", b"v")

    async with TestBoard(app) as tb:
        tb.publish(Question(text="x"))
        await tb.run_until_idle()
        [dead] = tb.dead_letters(Question)
    assert b"ordered=True" in dict(dead.headers)["bb.dlq.exception.message"]


def test_join_and_batch_agents_take_the_same_admission_options_as_plain_ones() -> None:
    from scheduler.policies import PolicySpec
    from scheduler.ratelimit import RateLimit
    from scheduler.retrybudget import RetryBudget

    app = App(registry=reg)
    limit, budget = RateLimit(requests_per_s=5.0), RetryBudget(ratio=0.1, window_s=5.0)

    @app.join(
        consumes={Question: 1, Answer: 1},
        publishes=Answer,
        policy="srpt",
        rate_limit=limit,
        retry_budget=budget,
    )
    async def pair(joined: object, ctx: Context) -> None:
        return None

    @app.batch(consumes=Question, policy="plas", rate_limit=limit, retry_budget=budget)
    async def grouped(batch: object, ctx: Context) -> None:
        return None

    for name, policy in (("pair", "srpt"), ("grouped", "plas")):
        spec = app.agents[name]
        assert spec.rate_limit is limit and spec.retry_budget is budget
        assert spec.policy == PolicySpec(policy) and spec.ordered


async def test_a_context_variable_a_handler_sets_does_not_leak_into_the_next_record() -> None:
    """Records after one another share a handler slot's task unless a handler changed a
    context variable (structlog's bound context, say): then the next gets a task of its own."""
    import structlog

    app = App(registry=reg)
    seen: list[dict[str, object]] = []

    @app.agent(consumes=Question, concurrency=1, breaker=None)
    async def binder(q: Question, ctx: Context) -> None:
        seen.append(dict(structlog.contextvars.get_contextvars()))
        if q.text == "first":
            structlog.contextvars.bind_contextvars(order="first")

    async with TestBoard(app, partitions=1) as tb:
        for text in ("first", "second", "third"):
            tb.publish(Question(text=text), partition_key="k")
        await tb.run_until_idle()
    assert seen == [{}, {}, {}]
