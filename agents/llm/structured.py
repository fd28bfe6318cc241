"""Answers into the declared Pydantic type: the schema a model is held to, strict validation,
a repair of syntax only (code fences, prose around one JSON value), and the re-ask that tells
the model what was wrong."""

from __future__ import annotations

import functools
import re
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)

_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


@functools.cache
def output_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of ``model`` as providers take it (made once per type: pydantic takes
    ~0.3 ms to build one). Callers must not change it."""
    return model.model_json_schema()


def repair(text: str) -> str | None:
    """The answer's one JSON value, if its syntax only was off: inside a code fence, or with
    prose around a single object or array. None if nothing needed repair or none is possible
    (two values, unbalanced brackets). Never used on a truncated answer."""
    fenced = _FENCE.match(text)
    candidate = fenced.group(1) if fenced else text
    stripped = candidate.strip()
    if fenced and _is_json(stripped):
        return stripped
    spans = _top_level_values(stripped)
    if len(spans) != 1:
        return None
    start, end = spans[0]
    value = stripped[start:end]
    if value == text.strip() or not _is_json(value):
        return None
    return value


def _is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def _top_level_values(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each balanced top-level ``{...}`` or ``[...]`` in ``text``,
    brackets inside strings ignored."""
    spans: list[tuple[int, int]] = []
    depth, start, in_string, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"' and depth > 0:
            in_string = True
        elif ch in "{[":
            if depth == 0:
                start = i
            depth += 1
        elif ch in "}]" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1))
    if depth != 0:
        return []  # unbalanced: not a value to repair
    return spans


def validate(model: type[T], text: str) -> tuple[T | None, tuple[str, ...], bool]:
    """``(value, errors, repaired)``: the answer validated strictly as ``model``, else the
    validation errors (one line each). A syntax-only repair is tried when the text is not
    JSON as given."""
    try:
        return model.model_validate_json(text, strict=True), (), False
    except ValidationError as exc:
        first = exc
    fixed = repair(text) if _json_invalid(first) else None
    if fixed is not None:
        try:
            return model.model_validate_json(fixed, strict=True), (), True
        except ValidationError as exc:
            return None, error_lines(exc), True
    return None, error_lines(first), False


def _json_invalid(error: ValidationError) -> bool:
    return any(e["type"] == "json_invalid" for e in error.errors())


def error_lines(error: ValidationError) -> tuple[str, ...]:
    """The errors as ``path: message (got value)`` lines."""
    lines = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(answer)"
        got = e.get("input")
        shown = "" if e["type"] == "json_invalid" else f" (got {_short(got)})"
        lines.append(f"{where}: {e['msg']}{shown}")
    return tuple(lines)


def _short(value: object) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= 80 else text[:77] + "..."


def reask_prompt(model: type[BaseModel], errors: tuple[str, ...]) -> str:
    """What the model is told after an answer that did not validate."""
    listed = "\n".join(f"- {e}" for e in errors)
    return (
        f"Your answer is not a valid {model.__name__}:\n{listed}\n"
        "Answer again with only the corrected JSON value."
    )


def schema_prompt(model: type[BaseModel]) -> str:
    """The instruction that names the schema, for models held to it by nothing else."""
    schema = orjson.dumps(output_schema(model)).decode()
    return f"Answer with one JSON value of this JSON schema, and nothing else:\n{schema}"
