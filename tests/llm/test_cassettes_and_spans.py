"""Layer 3: cassettes (record once with the real local model, replay bit for bit and fail
closed on a miss), and the chat spans a model call leaves, with the GenAI attributes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, Field

from agents.agent import App
from agents.context import Context
from agents.llm import FunctionModel, LLMRequest, LLMSettings
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.errors import CassetteMissError
from blackboard.shell.testing import TestBoard
from observability import segments, tracing
from observability.runs import RunInfo

MODEL = "local:smollm2"
reg = TypeRegistry()


@artifact("cas.Idea", registry=reg)
class Idea(BaseModel):
    title: str


@artifact("cas.Review", registry=reg)
class Review(BaseModel):
    summary: str
    score: int = Field(ge=1, le=10)


def _app() -> App:
    app = App(registry=reg)

    @app.agent(consumes=Idea, publishes=Review)
    async def reviewer(idea: Idea, ctx: Context) -> Review:
        # Long ideas are cut off at 12 tokens: the re-ask path, then the DLQ.
        limit = 12 if idea.title.startswith("long") else 80
        return await ctx.llm(
            Review,
            f"Idea: {idea.title}",
            model=MODEL,
            system="You review research ideas. Give a one-sentence summary and a score from "
            "1 to 10.",
            max_tokens=limit,
        )

    return app


TITLES = ["bees on solar panels", "bees on solar panels", "quantum coffee", "long essay idea"]


async def _run(settings: LLMSettings, **models: Any) -> tuple[list[bytes], list[tuple[Any, ...]]]:
    async with TestBoard(_app(), llm=settings, models=models or None) as tb:
        for title in TITLES:
            tb.publish(Idea(title=title))
        await tb.run_until_idle(timeout=240)
        # Handlers run concurrently, so outputs land in the order calls finish: compare them
        # as sorted bytes.
        outputs = sorted(orjson.dumps(a.payload.model_dump()) for a in tb.artifacts(Review))
        letters = sorted(
            (r.header("bb.dlq.stage"), r.header("bb.dlq.exception.class"))
            for r in tb.dead_letters(Idea)
        )
    return outputs, letters


def _refuse(request: LLMRequest) -> str:
    raise AssertionError(f"a replayed run called the model: {request.model}")


async def test_a_recorded_run_replays_bit_for_bit_without_calling_the_model(
    tmp_path: Path,
) -> None:
    cassette = tmp_path / "run.jsonl"
    recorded = await _run(LLMSettings(cassette=cassette, cassette_mode="record"))
    outputs, letters = recorded
    # What the tiny model makes of each idea: reviews, and at least the cut-off one dead.
    assert len(outputs) >= 2 and len(outputs) + len(letters) == len(TITLES)
    assert (b"llm_output", b"blackboard.errors.LLMOutputError") in letters
    entries = [orjson.loads(line) for line in cassette.read_bytes().splitlines()]
    # The repeated identical request is recorded twice, as occurrences 0 and 1; the cut-off
    # idea's request and its two re-asks are three entries, each with finish_reason=length.
    by_key: dict[str, list[int]] = {}
    for e in entries:
        by_key.setdefault(e["key"], []).append(e["n"])
    # Entries are written as calls finish, each with the occurrence its call took at start.
    occurrences = [sorted(ns) for ns in by_key.values()]
    assert [0, 1] in occurrences  # the repeated request
    assert all(ns == list(range(len(ns))) for ns in occurrences)
    assert sum(e["result"]["finish_reason"] == "length" for e in entries) >= 3

    stand_in = FunctionModel(_refuse, provider="local", structured="grammar")
    replaying = LLMSettings(cassette=cassette, cassette_mode="replay")
    replayed = await _run(replaying, **{MODEL: stand_in})
    assert replayed == recorded  # the same bytes, the same dead letters
    assert stand_in.requests == []


async def test_replay_fails_closed_on_a_request_never_recorded(tmp_path: Path) -> None:
    cassette = tmp_path / "empty.jsonl"
    cassette.write_bytes(b"")
    stand_in = FunctionModel(_refuse, provider="local", structured="grammar")
    async with TestBoard(
        _app(), llm=LLMSettings(cassette=cassette, cassette_mode="replay"), models={MODEL: stand_in}
    ) as tb:
        idea = tb.publish(Idea(title="never recorded"))
        await tb.run_until_idle(timeout=30)
        (letter,) = tb.dead_letters(Idea)
    assert letter.header("bb.id") == idea.id.encode()
    assert letter.header("bb.dlq.exception.class") == b"blackboard.errors.CassetteMissError"
    assert letter.header("bb.dlq.attempt") == b"1"  # unretryable: no second try
    assert stand_in.requests == []


async def test_repeated_identical_requests_replay_in_order(tmp_path: Path) -> None:
    from agents.llm.cassette import Cassette

    answers = iter(["first", "second", "third"])
    model = FunctionModel(lambda request: next(answers))
    request = LLMRequest(model="m", messages=())
    recorder = Cassette(tmp_path / "c.jsonl", "record")
    made = [
        (await recorder.call("function", request, lambda: model.complete(request))).text
        for _ in range(3)
    ]
    recorder.close()
    player = Cassette(tmp_path / "c.jsonl", "replay")

    async def never() -> Any:
        raise AssertionError("replay called the model")

    replayed = [(await player.call("function", request, never)).text for _ in range(3)]
    assert made == replayed == ["first", "second", "third"]
    with pytest.raises(CassetteMissError, match="occurrence 4"):
        await player.call("function", request, never)


async def test_a_model_call_is_a_chat_span_under_its_process_span(tmp_path: Path) -> None:
    trace = tracing.start_tracing(tmp_path, RunInfo.create(scenario="llm"))
    try:
        _, letters = await _run(LLMSettings())
    finally:
        trace.stop()
    con = segments.open_runs(tmp_path, [trace.run.run_id])
    rows = (
        con.sql(
            "SELECT c.*, p.operation AS parent_operation, p.artifact_id AS parent_artifact "
            "FROM spans c JOIN spans p ON c.parent_span_id = p.span_id AND c.trace_id = p.trace_id "
            "WHERE c.operation = 'chat' ORDER BY c.start_ns"
        )
        .to_arrow_table()
        .to_pylist()
    )
    assert len(rows) == len(TITLES)  # one span per ctx.llm call (re-asks inside it)
    for row in rows:
        attrs = orjson.loads(row["attributes"])
        assert row["name"] == "chat smollm2" and row["kind"] == "CLIENT"
        assert row["parent_operation"] == "process" and row["parent_artifact"] == row["artifact_id"]
        assert row["agent"] == "reviewer"
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.provider.name"] == "local"
        assert attrs["gen_ai.request.model"] == "smollm2"
        assert attrs["gen_ai.response.model"] == "local:smollm2"
        assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
        assert attrs["bb.llm.cost"] == 0.0
        if row["status"] == "OK":
            assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
            assert attrs["bb.llm.reasks"] in (0, 1, 2) and "bb.llm.error" not in attrs
            assert attrs["bb.llm.requests"] == attrs["bb.llm.reasks"] + 1
        else:
            assert attrs["bb.llm.reasks"] == 2 and attrs["bb.llm.requests"] == 3
            assert attrs["bb.llm.error"] == "llm_output"
    assert sum(r["status"] == "ERROR" for r in rows) == len(letters) >= 1


async def test_a_second_recording_starts_the_cassette_afresh(tmp_path: Path) -> None:
    from agents.llm.cassette import Cassette

    path = tmp_path / "c.jsonl"
    request = LLMRequest(model="m", messages=())
    for answer in ("old", "new"):
        model = FunctionModel(lambda r, answer=answer: answer)
        recorder = Cassette(path, "record")
        await recorder.call("function", request, lambda model=model: model.complete(request))
        recorder.close()

    async def never() -> Any:
        raise AssertionError("replay called the model")

    player = Cassette(path, "replay")
    assert (await player.call("function", request, never)).text == "new"
    assert len(path.read_bytes().splitlines()) == 1
