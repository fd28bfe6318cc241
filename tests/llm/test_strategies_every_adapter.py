"""Each strategy over every HTTP adapter, the same test with no per-adapter branch in the
runtime: re-ask after an invalid answer, dead-letter a cut-off one, wait out a 429, trip the
breaker on quota exhausted, record and replay. The adapters talk real HTTP to the tests' fault
server (a provider will not misbehave on demand); the local model's paths are real
(test_local_model_agents.py)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from agents.agent import App
from agents.breaker import BreakerPolicy
from agents.context import Context
from agents.llm import LLMSettings
from agents.llm.adapter import ModelAdapter
from agents.llm.anthropic_adapter import AnthropicAdapter
from agents.llm.openai_adapter import OpenAIAdapter
from agents.retry import RetryPolicy
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.shell.testing import TestBoard
from tests.llm.faultserver import (
    FaultServer,
    Reply,
    anthropic_error,
    anthropic_message,
    openai_completion,
    openai_error,
)

reg = TypeRegistry()


@artifact("strat.Ask", registry=reg)
class Ask(BaseModel):
    n: int


@artifact("strat.Score", registry=reg)
class Score(BaseModel):
    score: int = Field(ge=1, le=10)


@dataclass(frozen=True)
class Provider:
    """How one provider answers: a JSON answer, a cut-off one, its 429 and its quota error."""

    name: str
    make: Callable[[str], ModelAdapter]
    answer: Callable[[str], Reply]
    cut_off: Callable[[str], Reply]
    rate_limited: Callable[[float], Reply]
    quota: Callable[[], Reply]


OPENAI = Provider(
    "openai",
    lambda url: OpenAIAdapter("m", api_key="sk-test-key-0000", base_url=f"{url}/v1"),
    lambda text: Reply(200, openai_completion(text)),
    lambda text: Reply(200, openai_completion(text, finish_reason="length")),
    lambda after: Reply(429, openai_error("slow down", code="rate_limit_exceeded"),
                        {"retry-after": str(after)}),
    lambda: Reply(429, openai_error("You exceeded your current quota", code="insufficient_quota")),
)  # fmt: skip


def _tool(text: str) -> list[dict[str, Any]]:
    return [{"type": "tool_use", "id": "t1", "name": "Score", "input": json.loads(text)}]


ANTHROPIC = Provider(
    "anthropic",
    lambda url: AnthropicAdapter("claude-x", api_key="sk-ant-test-0000", base_url=url),
    lambda text: Reply(200, anthropic_message(_tool(text), stop_reason="tool_use")),
    lambda text: Reply(200, anthropic_message([{"type": "text", "text": text}],
                                              stop_reason="max_tokens")),
    lambda after: Reply(429, anthropic_error("slow down", type="rate_limit_error"),
                        {"retry-after": str(after)}),
    lambda: Reply(400, anthropic_error("Your credit balance is too low")),
)  # fmt: skip

MODEL = "stand-in:model"


@pytest.fixture(params=[OPENAI, ANTHROPIC], ids=lambda p: p.name)
def provider(request: pytest.FixtureRequest) -> Provider:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as fault_server:
        yield fault_server


@pytest.fixture
async def make(provider: Provider, server: FaultServer) -> AsyncIterator[Callable[[], Any]]:
    """Adapters of the provider for the fault server, closed at the end (a stand-in given
    to a worker belongs to whoever made it)."""
    made: list[ModelAdapter] = []

    def new() -> ModelAdapter:
        made.append(provider.make(server.url))
        return made[-1]

    yield new
    for adapter in made:
        await adapter.aclose()


def _app(calls: list[float], **run: Any) -> App:
    app = App(registry=reg)
    retry = RetryPolicy(max_attempts=3, backoff_ms=5, max_backoff_ms=10, jitter="none")

    @app.agent(consumes=Ask, publishes=Score, model=MODEL, retry=retry, **run)
    async def scorer(ask: Ask, ctx: Context) -> Score:
        calls.append(time.monotonic())
        return await ctx.llm(Score, f"score {ask.n}", temperature=None)

    return app


async def test_an_invalid_answer_is_reasked_with_its_errors(
    provider: Provider, server: FaultServer, make: Callable[[], Any]
) -> None:
    server.queue(provider.answer('{"score": 42}'), provider.answer('{"score": 4}'))
    calls: list[float] = []
    async with TestBoard(_app(calls), models={MODEL: make()}) as tb:
        tb.publish(Ask(n=1))
        await tb.run_until_idle()
        assert [a.payload.score for a in tb.artifacts(Score)] == [4]
    first, second = server.requests
    assert "less than or equal to 10 (got 42)" in json.dumps(second.body)
    assert len(json.dumps(second.body)) > len(json.dumps(first.body))  # the conversation grew
    assert len(calls) == 1


async def test_a_cut_off_answer_is_reasked_then_dead_lettered(
    provider: Provider, server: FaultServer, make: Callable[[], Any]
) -> None:
    server.queue(*[provider.cut_off('{"score": ') for _ in range(3)])
    calls: list[float] = []
    async with TestBoard(_app(calls), models={MODEL: make()}) as tb:
        ask = tb.publish(Ask(n=1))
        await tb.run_until_idle()
        (letter,) = tb.dead_letters(Ask)
    assert letter.header("bb.id") == ask.id.encode()
    assert letter.header("bb.dlq.stage") == b"llm_output"
    assert b"cut off" in (letter.header("bb.dlq.exception.message") or b"")
    assert len(server.requests) == 3 and len(calls) == 1  # never repaired, never retried


async def test_a_429_is_waited_out_and_the_call_goes_on(
    provider: Provider, server: FaultServer, make: Callable[[], Any]
) -> None:
    server.queue(provider.rate_limited(0.5), provider.answer('{"score": 7}'))
    calls: list[float] = []
    app = _app(calls, breaker=BreakerPolicy(failures=1, cooldown_s=60))
    async with TestBoard(app, models={MODEL: make()}) as tb:
        tb.publish(Ask(n=1))
        await tb.run_until_idle()
        assert [a.payload.score for a in tb.artifacts(Score)] == [7]
        breaker = tb.worker.runners[0]._breaker
    limited, answered = server.requests
    assert answered.at - limited.at >= 0.5 and len(calls) == 1
    assert breaker is not None and breaker.opens == 0  # a 429 is not a failure


async def test_quota_exhausted_opens_the_breaker_at_once(
    provider: Provider, server: FaultServer, make: Callable[[], Any]
) -> None:
    server.queue(provider.quota(), provider.answer('{"score": 2}'))
    calls: list[float] = []
    app = _app(calls, breaker=BreakerPolicy(failures=5, cooldown_s=0.3))
    async with TestBoard(app, models={MODEL: make()}) as tb:
        tb.publish(Ask(n=1))
        await tb.run_until_idle()
        assert [a.payload.score for a in tb.artifacts(Score)] == [2]
        breaker = tb.worker.runners[0]._breaker
    assert breaker is not None and breaker.opens == 1
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.3


async def test_a_recorded_run_replays_without_the_server(
    provider: Provider, server: FaultServer, make: Callable[[], Any], tmp_path: Path
) -> None:
    cassette = tmp_path / "c.jsonl"
    server.queue(provider.answer('{"score": 42}'), provider.answer('{"score": 5}'))
    recording = LLMSettings(cassette=cassette, cassette_mode="record")
    async with TestBoard(_app([]), llm=recording, models={MODEL: make()}) as tb:
        tb.publish(Ask(n=1))
        await tb.run_until_idle()
        recorded = [a.payload for a in tb.artifacts(Score)]
    requests = len(server.requests)
    replaying = LLMSettings(cassette=cassette, cassette_mode="replay")
    async with TestBoard(_app([]), llm=replaying, models={MODEL: make()}) as tb:
        tb.publish(Ask(n=1))
        await tb.run_until_idle()
        assert [a.payload for a in tb.artifacts(Score)] == recorded == [Score(score=5)]
    assert len(server.requests) == requests == 2  # the re-ask replayed too, and no call made
