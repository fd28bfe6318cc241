"""Structured output: strict validation, syntax-only repair; model strings shown masked."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from agents.llm.models import parse_model
from agents.llm.structured import repair, validate


class Review(BaseModel):
    summary: str
    score: int = Field(ge=1, le=10)


@pytest.mark.parametrize(
    ("text", "fixed"),
    [
        ('```json\n{"summary": "x", "score": 3}\n```', '{"summary": "x", "score": 3}'),
        ('```\n{"summary": "x", "score": 3}\n```', '{"summary": "x", "score": 3}'),
        ('Sure! Here it is: {"summary": "a {b}", "score": 3} Hope it helps.', None),
        ('{"summary": "x", "score": 3}', None),  # nothing to repair
        ('one {"a": 1} two {"b": 2}', None),  # two values: not a syntax slip
        ('{"summary": "x", "score": ', None),  # unbalanced (cut off): no repair
    ],
)
def test_repair_fixes_syntax_only(text: str, fixed: str | None) -> None:
    if fixed is None and "Sure" in text:
        assert repair(text) == '{"summary": "a {b}", "score": 3}'
    else:
        assert repair(text) == fixed


def test_validation_is_strict_and_names_each_error() -> None:
    value, errors, repaired = validate(Review, '{"summary": "ok", "score": 7}')
    assert value == Review(summary="ok", score=7) and errors == () and not repaired
    value, errors, _ = validate(Review, '{"summary": "ok", "score": 42}')
    assert value is None
    assert errors == ("score: Input should be less than or equal to 10 (got 42)",)
    value, errors, _ = validate(Review, '{"summary": "ok", "score": "7"}')  # no coercion
    assert value is None and errors[0].startswith("score: Input should be a valid integer")
    value, errors, repaired = validate(Review, 'Here: {"summary": "ok", "score": 2}')
    assert value == Review(summary="ok", score=2) and repaired
    value, errors, _ = validate(Review, "no json at all")
    assert value is None and errors[0].startswith("(answer): Invalid JSON")


async def test_a_base_url_password_is_masked_in_spans_errors_and_dead_letters(
    tmp_path: Path,
) -> None:
    from agents.agent import App
    from agents.context import Context
    from agents.llm import FunctionModel
    from blackboard.artifacts import TypeRegistry, artifact
    from blackboard.errors import ConfigError
    from blackboard.shell.testing import TestBoard
    from observability import segments, tracing
    from observability.runs import RunInfo

    secret = "pw-0123456789"
    model = f"openai:m?base_url=http://bob:{secret}@127.0.0.1:9/v1"
    with pytest.raises(ConfigError) as bad:
        parse_model(model + "&nope=1")
    assert secret not in str(bad.value) and "bob:***@" in str(bad.value)

    reg = TypeRegistry()

    @artifact("mask.In", registry=reg)
    class In(BaseModel):
        n: int

    artifact("mask.Review", registry=reg)(Review)

    app = App(registry=reg)

    @app.agent(consumes=In, publishes=Review, model=model)
    async def asker(item: In, ctx: Context) -> Review:
        return await ctx.llm(Review, "review", max_reasks=0)

    stand_in = FunctionModel(lambda r: '{"summary": "x", "score": 99}', provider="openai")
    trace = tracing.start_tracing(tmp_path, RunInfo.create(scenario="mask"))
    try:
        async with TestBoard(app, models={model: stand_in}) as tb:
            tb.publish(In(n=1))
            await tb.run_until_idle()
            (letter,) = tb.dead_letters(In)
    finally:
        trace.stop()
    assert all(secret.encode() not in value for _, value in letter.headers)
    assert b"bob:***@" in (letter.header("bb.dlq.exception.message") or b"")
    rows = segments.open_runs(tmp_path, [trace.run.run_id]).sql("SELECT * FROM spans")
    text = repr(rows.to_arrow_table().to_pylist())
    assert "bob:***@" in text and secret not in text
