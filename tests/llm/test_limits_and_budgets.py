"""How model failures, limits and budgets steer a record, through ``ctx.llm`` with a stand-in
model that fails on demand (a provider will not 429 or run out of quota when asked): a 429
waits without counting a failure and pauses every caller of the endpoint, quota exhausted
opens the breaker at once, request faults are dead-lettered at once, overloads are retried,
tokens are reserved and corrected against ``tokens_per_s``, budgets dead-letter or defer."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from pydantic import BaseModel

from agents.agent import App
from agents.breaker import BreakerPolicy
from agents.context import Context
from agents.llm import FunctionModel, LLMRequest, LLMResult, Usage
from agents.llm.adapter import llm_error
from agents.llm.gate import ModelGate
from agents.retry import RetryPolicy
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.shell.testing import TestBoard
from scheduler.budgets import Budget
from scheduler.ratelimit import RateLimit

reg = TypeRegistry()
MODEL = "openai:stand-in"
FAST = RetryPolicy(max_attempts=3, backoff_ms=10, max_backoff_ms=20, jitter="none")


@artifact("lim.Ask", registry=reg)
class Ask(BaseModel):
    n: int


@artifact("lim.Answer", registry=reg)
class Answer(BaseModel):
    n: int


def _answer(usage: int = 100) -> LLMResult:
    return LLMResult(
        text='{"n": 1}',
        usage=Usage(input_tokens=usage - 10, output_tokens=10),
        model="stand-in",
        provider="openai",
    )


def scripted(*steps: str | LLMResult) -> FunctionModel:
    """A model answering each request with the next step: an error kind (raised) or a result;
    the last step repeats."""
    queue = list(steps)

    def answer(request: LLMRequest) -> LLMResult:
        step = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(step, LLMResult):
            return step
        kind, _, after = step.partition("@")
        raise llm_error(
            f"scripted {kind}",
            kind,  # type: ignore[arg-type]
            provider="openai",
            status=429 if kind == "rate_limited" else 500,
            retry_after_s=float(after) if after else None,
        )

    return FunctionModel(answer, provider="openai", structured="json_schema")


def _app(**run: object) -> tuple[App, list[float]]:
    app = App(registry=reg)
    called: list[float] = []

    @app.agent(consumes=Ask, publishes=Answer, model=MODEL, retry=FAST, **run)  # type: ignore[arg-type]
    async def asker(ask: Ask, ctx: Context) -> Answer:
        called.append(time.monotonic())
        answer = await ctx.llm(Answer, f"n={ask.n}")
        return Answer(n=ask.n + answer.n)

    return app, called


async def test_a_429_waits_out_retry_after_without_failing_the_record() -> None:
    app, called = _app(breaker=BreakerPolicy(failures=1, cooldown_s=30))
    model = scripted("rate_limited@0.4", _answer())
    async with TestBoard(app, models={MODEL: model}) as tb:
        started = time.monotonic()
        tb.publish(Ask(n=1))
        await tb.run_until_idle()
        took = time.monotonic() - started
        (out,) = tb.artifacts(Answer)
        runner = tb.worker.runners[0]
        stats, breaker = tb.worker.llm.stats, runner._breaker
    assert out.payload.n == 2 and took >= 0.4
    assert len(called) == 1  # one handler attempt: the wait was inside the call
    assert len(model.requests) == 2 and stats.rate_limited == 1 and stats.errors == 0
    assert breaker is not None and breaker.state == "closed" and breaker.consecutive_failures == 0


async def test_a_429_pauses_every_caller_of_the_endpoint() -> None:
    app = App(registry=reg)
    seen: list[tuple[str, float]] = []
    first = True

    def answer(request: LLMRequest) -> LLMResult:
        nonlocal first
        seen.append((request.messages[-1].content, time.monotonic()))
        if first:
            first = False
            raise llm_error("slow down", "rate_limited", provider="openai", retry_after_s=0.5)
        return _answer()

    model = FunctionModel(answer, provider="openai", structured="json_schema")
    for name in ("a", "b"):

        async def handler(ask: Ask, ctx: Context, name: str = name) -> Answer:
            if name == "b":
                await _sleep(0.1)  # b asks while a's 429 pause is on
            return await ctx.llm(Answer, f"{name}{ask.n}", model=MODEL)

        app.add(handler, consumes=Ask, publishes=Answer, name=f"agent_{name}")
    async with TestBoard(app, models={MODEL: model}) as tb:
        tb.publish(Ask(n=1))
        await tb.run_until_idle()
        assert len(tb.artifacts(Answer)) == 2
    throttled_at = seen[0][1]
    later = [t for _, t in seen[1:]]
    assert len(later) == 2 and all(t >= throttled_at + 0.5 for t in later)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def test_429s_teach_the_gate_a_rate_just_under_the_limit() -> None:
    now = [100.0]
    gate = ModelGate(now=lambda: now[0])
    gate.throttled(None)  # nothing answered yet: a pause, no rate to learn from
    assert gate.rate is None and gate.paused_until == pytest.approx(100.1)
    for _ in range(20):  # 20 answers in a second, then a 429
        gate.succeeded()
        now[0] += 0.05
    gate.throttled(1.0)
    assert gate.ceiling == pytest.approx(20.0)  # what succeeded
    assert gate.rate == pytest.approx(0.85 * 20)
    assert gate.paused_until == pytest.approx(now[0] + 1.0) and gate.wait_s() > 0.9
    gate.throttled(1.0)  # a 429 of a call already in flight: the same event
    assert gate.rate == pytest.approx(17.0) and gate.stats.decreases == 1
    now[0] += 3.0  # 2 s after the pause: the gap to the ceiling closes at half per second
    assert gate.wait_s() == 0.0
    assert gate.rate == pytest.approx(17.0 + 3.0 * 1.0)  # min(1, 0.5 * 2 s) of the gap
    now[0] += 1.0  # at the ceiling: probing above it by 1 request/s per second
    gate.wait_s()
    assert gate.rate == pytest.approx(21.0)
    gate.throttled(None)  # the next 429: the ceiling is the rate that hit it
    assert gate.ceiling == pytest.approx(21.0) and gate.rate == pytest.approx(0.85 * 21.0)


async def test_quota_exhausted_opens_the_breaker_at_once() -> None:
    app, called = _app(breaker=BreakerPolicy(failures=5, cooldown_s=0.3))
    model = scripted("quota_exhausted", _answer())
    async with TestBoard(app, models={MODEL: model}) as tb:
        tb.publish(Ask(n=1))
        await tb.run_until_idle()
        (out,) = tb.artifacts(Answer)
        breaker = tb.worker.runners[0]._breaker
    assert out.payload.n == 2
    assert breaker is not None and breaker.opens == 1  # one failure opened a 5-failure breaker
    assert len(called) == 2 and called[1] - called[0] >= 0.3  # the retry waited for the trial


@pytest.mark.parametrize("kind", ["invalid_request", "auth", "context_window"])
async def test_request_faults_are_dead_lettered_at_once(kind: str) -> None:
    app, called = _app()
    async with TestBoard(app, models={MODEL: scripted(kind)}) as tb:
        ask = tb.publish(Ask(n=1))
        await tb.run_until_idle()
        (letter,) = tb.dead_letters(Ask)
    assert letter.header("bb.id") == ask.id.encode()
    assert letter.header("bb.dlq.attempt") == b"1" and len(called) == 1
    assert letter.header("bb.dlq.exception.class") == b"blackboard.errors.LLMRequestError"
    assert kind.encode() in (letter.header("bb.dlq.exception.message") or b"")


async def test_overloads_are_retried_and_count_toward_the_breaker() -> None:
    app, called = _app(breaker=BreakerPolicy(failures=10, cooldown_s=30))
    model = scripted("overloaded", "server", _answer())
    async with TestBoard(app, models={MODEL: model}) as tb:
        tb.publish(Ask(n=1))
        await tb.run_until_idle()
        (out,) = tb.artifacts(Answer)
        breaker = tb.worker.runners[0]._breaker
    assert out.payload.n == 2 and len(called) == 3  # two failed attempts, then the answer
    assert breaker is not None and breaker.state == "closed" and breaker.opens == 0


async def test_tokens_are_reserved_before_and_corrected_after() -> None:
    app, _ = _app(rate_limit=RateLimit(tokens_per_s=1.0, burst_s=10_000))
    reserved: list[float] = []
    bucket_of: list[Callable[[], float]] = []

    def answer(request: LLMRequest) -> LLMResult:
        reserved.append(bucket_of[0]())  # the balance while the call is in flight
        return _answer(usage=100)

    model = FunctionModel(answer, provider="openai", structured="json_schema")
    async with TestBoard(app, models={MODEL: model}) as tb:
        limiter = tb.worker.runners[0]._limiter
        bucket = limiter.tokens  # type: ignore[union-attr]
        assert bucket is not None
        bucket_of.append(lambda: bucket.tokens)
        full = bucket.burst
        tb.publish(Ask(n=1))
        await tb.run_until_idle()
        after = bucket.tokens
    (request,) = model.requests
    estimate = request.prompt_chars() // 4 + request.max_tokens
    assert reserved[0] == pytest.approx(full - estimate, abs=2.0)  # reserved before the call
    assert after == pytest.approx(full - 100, abs=2.0)  # corrected to the 100 it used


async def test_a_budget_dead_letters_what_would_pass_it_per_tenant() -> None:
    budget = Budget(max_tokens=700, per="tenant")  # each call reserves ~530, uses 100
    app, _ = _app(budgets=[budget], concurrency=1)
    async with TestBoard(app, models={MODEL: scripted(_answer(usage=100))}, partitions=1) as tb:
        firsts = [tb.publish(Ask(n=i), tenant="acme") for i in range(2)]
        late = tb.publish(Ask(n=9), tenant="acme")
        other = tb.publish(Ask(n=5), tenant="globex")
        await tb.run_until_idle()
        outs = {a.envelope.causation_ids[0] for a in tb.artifacts(Answer)}
        letters = tb.dead_letters(Ask)
    # acme: 100 + 100 spent; the third would reserve ~530 more: over 700. globex is apart.
    assert outs == {firsts[0].id, firsts[1].id, other.id}
    (letter,) = letters
    assert letter.header("bb.id") == late.id.encode()
    assert letter.header("bb.dlq.stage") == b"budget" and letter.header("bb.dlq.attempt") == b"1"


async def test_a_deferring_budget_waits_for_its_next_window() -> None:
    budget = Budget(max_tokens=600, per="agent", window_s=0.5, on_exceed="defer")
    app, _ = _app(budgets=[budget], concurrency=1)
    asked: list[float] = []

    def answer(request: LLMRequest) -> LLMResult:
        asked.append(time.time())  # budgets count in wall-clock windows
        return _answer(usage=100)

    model = FunctionModel(answer, provider="openai", structured="json_schema")
    async with TestBoard(app, models={MODEL: model}, partitions=1) as tb:
        for i in range(2):
            tb.publish(Ask(n=i))
        await tb.run_until_idle()
        assert len(tb.artifacts(Answer)) == 2 and tb.dead_letters(Ask) == []
    # The second call (100 spent + ~530 reserved > 600) waited for the next window.
    assert len(asked) == 2 and int(asked[0] // 0.5) < int(asked[1] // 0.5)


async def test_a_429_holds_the_agent_s_rate_limit_so_new_records_wait() -> None:
    app, called = _app(rate_limit=RateLimit(requests_per_s=1000))
    throttled: list[float] = []

    def answer(request: LLMRequest) -> LLMResult:
        if not throttled:
            throttled.append(time.monotonic())
            raise llm_error("slow down", "rate_limited", provider="openai", retry_after_s=0.6)
        return _answer()

    model = FunctionModel(answer, provider="openai", structured="json_schema")
    async with TestBoard(app, models={MODEL: model}) as tb:
        tb.publish(Ask(n=1))
        while not throttled:
            await _sleep(0.01)
        await _sleep(0.1)
        tb.publish(Ask(n=2))  # arrives while the hold is on
        await tb.run_until_idle()
        assert sorted(a.payload.n for a in tb.artifacts(Answer)) == [2, 3]
    assert len(called) == 2 and called[1] >= throttled[0] + 0.6  # its handler waited


async def test_calls_running_at_once_cannot_all_pass_a_budget() -> None:
    # Each call holds ~538 tokens (its estimate) and uses 100: 10 at once against 1,000 tokens.
    # Held estimates keep them from all passing the check together; those that fit what was
    # spent wait for the calls in flight to settle instead of being dead-lettered.
    budget = Budget(max_tokens=1000, per="agent")
    app, _ = _app(budgets=[budget], concurrency=10)
    in_flight, peak = 0, 0

    async def answer(request: LLMRequest) -> LLMResult:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await _sleep(0.05)
        in_flight -= 1
        return _answer(usage=100)

    model = FunctionModel(answer, provider="openai", structured="json_schema")
    async with TestBoard(app, models={MODEL: model}) as tb:
        asks = [tb.publish(Ask(n=i)) for i in range(12)]
        await tb.run_until_idle()
        answered = {a.envelope.causation_ids[0] for a in tb.artifacts(Answer)}
        letters = tb.dead_letters(Ask)
        ledger = tb.worker.llm.ledger
    # 100 tokens each, ~538 estimated: a call fits while 100 k + 538 <= 1,000, so five do;
    # two at once never fit (2 x 538), so they ran one by one, waiting, not dead-lettered.
    assert len(answered) == 5 and len(letters) == 7
    assert answered | {r.header("bb.id").decode() for r in letters} == {a.id for a in asks}  # type: ignore[union-attr]
    assert all(r.header("bb.dlq.stage") == b"budget" for r in letters)
    assert peak == 1  # one estimate (~530) at a time fits beside what was spent
    (spent,) = ledger._spent.values()
    assert spent.tokens == 500 and spent.held_tokens == 0
