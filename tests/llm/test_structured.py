"""Structured output: strict validation, syntax-only repair, the re-ask's message."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

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
