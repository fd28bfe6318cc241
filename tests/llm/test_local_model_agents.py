"""Layer 1: a real language model (SmolLM2-135M in process) behind LLM agents, on the embedded
store and on Kafka. The tiny model really produces valid reviews, answers cut off at the token
limit and values out of bounds; each takes its path (output, re-asks, DLQ at stage
``llm_output``), checked record by record."""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel, Field

from agents.agent import App
from agents.context import Context
from agents.llm.client import LLMCall
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.shell.testing import TestBoard
from tests.contract.helpers import eventually

MODEL = "local:smollm2"
reg = TypeRegistry()


@artifact("llm.Idea", registry=reg)
class Idea(BaseModel):
    title: str


@artifact("llm.Review", registry=reg)
class Review(BaseModel):
    summary: str
    score: int = Field(ge=1, le=10)


@artifact("llm.Question", registry=reg)
class Question(BaseModel):
    text: str


@artifact("llm.Year", registry=reg)
class Year(BaseModel):
    year: int = Field(ge=1900, le=1950)


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("kafka_url"))


IDEAS = ["bees on solar panels", "a faster sorting algorithm", "quantum coffee"]


async def test_an_llm_agent_publishes_validated_reviews(url: str) -> None:
    app = App(registry=reg)
    calls: list[LLMCall] = []

    @app.llm_agent(
        consumes=Idea,
        publishes=Review,
        model=MODEL,
        instructions="You review research ideas: a one-sentence summary and a score 1-10.",
        max_tokens=80,
    )
    def reviewer(idea: Idea, ctx: Context) -> str:
        calls.append(ctx.llm_calls)  # type: ignore[arg-type]  # the list, filled by the call
        return f"Idea: {idea.title}"

    async with TestBoard(app, url=url, prefix=f"t{uuid.uuid4().hex[:8]}") as tb:
        sent = {tb.publish(Idea(title=t)).id: t for t in IDEAS}
        await eventually(
            lambda: len(tb.artifacts(Review)) + len(tb.dead_letters(Idea)) >= len(IDEAS),
            timeout=180,
            what="a review (or dead letter) per idea",
        )
        await tb.run_until_idle(timeout=60)
        reviews = tb.artifacts(Review)
        assert tb.dead_letters(Idea) == []
        stats = tb.worker.llm.stats
    assert sorted(r.envelope.causation_ids[0] for r in reviews) == sorted(sent)
    for review in reviews:
        assert 1 <= review.payload.score <= 10
        assert review.payload.summary
        assert review.envelope.produced_by == "reviewer"
    assert stats.calls == len(IDEAS) and stats.output_failures == 0
    assert stats.input_tokens > 0 and stats.output_tokens > 0
    assert stats.cost_usd == 0.0  # a local model is free
    for made in calls:
        (call,) = made  # type: ignore[misc]
        assert call.result is not None and call.result.provider == "local"
        assert call.usage.input_tokens > 0 and call.cost_usd == 0.0


async def test_cut_off_and_out_of_bounds_answers_are_reasked_then_dead_lettered(
    url: str,
) -> None:
    app = App(registry=reg)
    seen: dict[str, list[LLMCall]] = {}

    @app.agent(consumes=Idea, publishes=Review)
    async def long_winded(idea: Idea, ctx: Context) -> Review:
        seen[ctx.envelope.id] = ctx.llm_calls
        return await ctx.llm(
            Review,
            f"Write a very detailed, long summary of the idea '{idea.title}' and a score.",
            model=MODEL,
            max_tokens=12,  # the summary cannot fit: finish_reason=length every time
        )

    @app.agent(consumes=Question, publishes=Year)
    async def historian(q: Question, ctx: Context) -> Year:
        seen[ctx.envelope.id] = ctx.llm_calls
        return await ctx.llm(Year, q.text, model=MODEL, max_tokens=20)

    async with TestBoard(app, url=url, prefix=f"t{uuid.uuid4().hex[:8]}") as tb:
        idea = tb.publish(Idea(title="bees on solar panels"))
        question = tb.publish(Question(text="In what year did humans land on the moon?"))
        await eventually(
            lambda: (
                len(tb.dead_letters(Idea)) + len(tb.artifacts(Review)) >= 1
                and len(tb.dead_letters(Question)) + len(tb.artifacts(Year)) >= 1
            ),
            timeout=240,
            what="an outcome for each input",
        )
        await tb.run_until_idle(timeout=60)
        assert tb.artifacts(Review) == [] and tb.artifacts(Year) == []
        cut, bounds = tb.dead_letters(Idea), tb.dead_letters(Question)
        stats = tb.worker.llm.stats

    # One dead letter each, at the LLM stage, after the default two re-asks (three requests),
    # never retried as a handler failure (an LLMOutputError is unretryable).
    (cut_letter,) = cut
    assert cut_letter.header("bb.id") == idea.id.encode()
    assert cut_letter.header("bb.dlq.stage") == b"llm_output"
    assert cut_letter.header("bb.dlq.attempt") == b"1"
    message = (cut_letter.header("bb.dlq.exception.message") or b"").decode()
    assert "cut off at max_tokens=12" in message and "raw: " in message
    (cut_call,) = seen[idea.id]
    assert cut_call.requests == 3 and cut_call.reasks == 2
    assert cut_call.result is not None and cut_call.result.finish_reason == "length"

    (bounds_letter,) = bounds
    assert bounds_letter.header("bb.id") == question.id.encode()
    assert bounds_letter.header("bb.dlq.stage") == b"llm_output"
    message = (bounds_letter.header("bb.dlq.exception.message") or b"").decode()
    assert "year: Input should be" in message  # the validation error, with the value
    (bounds_call,) = seen[question.id]
    assert bounds_call.requests == 3 and bounds_call.reasks == 2
    assert stats.reasks == 4 and stats.output_failures == 2
