"""The declarative LLM agent over a join: the model reads an idea and its reviews together
(every part in the prompt by default) and answers once per complete set."""

from __future__ import annotations

from pydantic import BaseModel

from agents.agent import App
from agents.collected import JoinSet
from agents.context import Context
from agents.llm import FunctionModel, LLMRequest
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.shell.testing import TestBoard

reg = TypeRegistry()
MODEL = "openai:chair"


@artifact("lj.Idea", registry=reg)
class Idea(BaseModel):
    title: str


@artifact("lj.Review", registry=reg)
class Review(BaseModel):
    score: int


@artifact("lj.Verdict", registry=reg)
class Verdict(BaseModel):
    accepted: bool


async def test_the_model_reads_every_part_of_the_set() -> None:
    asked: list[LLMRequest] = []

    def answer(request: LLMRequest) -> str:
        asked.append(request)
        return '{"accepted": true}'

    app = App(registry=reg)
    app.add_llm_agent(
        name="chair",
        consumes={Idea: 1, Review: 2},
        publishes=Verdict,
        instructions="Decide whether to accept the idea from its reviews.",
        model=MODEL,
    )
    model = FunctionModel(answer, provider="openai", structured="json_schema")
    async with TestBoard(app, models={MODEL: model}) as tb:
        idea = tb.publish(Idea(title="bees"))
        for score in (7, 9):
            tb.publish(Review(score=score), correlation_id=idea.correlation_id)
        other = tb.publish(Idea(title="incomplete"))  # no reviews: no verdict
        await tb.run_until_idle()
        verdicts = tb.artifacts(Verdict)
    (verdict,) = verdicts
    assert verdict.payload == Verdict(accepted=True)
    assert verdict.envelope.correlation_id == idea.correlation_id != other.correlation_id
    assert len(verdict.envelope.causation_ids) == 3  # the idea and both reviews
    (request,) = asked
    system, user = request.messages
    assert system.role == "system" and system.content.startswith("Decide whether")
    assert user.content.count("lj.Review:") == 2 and "lj.Idea:" in user.content
    assert '"title": "bees"' in user.content and '"score": 9' in user.content


async def test_a_prompt_function_gets_the_join_set() -> None:
    asked: list[str] = []

    def answer(request: LLMRequest) -> str:
        asked.append(request.messages[-1].content)
        return '{"accepted": false}'

    app = App(registry=reg)

    @app.llm_agent(
        consumes={Idea: 1, Review: 1},
        publishes=Verdict,
        instructions="Decide.",
        model=MODEL,
    )
    def chair(parts: JoinSet, ctx: Context) -> str:
        [idea] = parts[Idea]
        return f"{idea.title}: " + ", ".join(str(r.score) for r in parts[Review])

    model = FunctionModel(answer, provider="openai", structured="json_schema")
    async with TestBoard(app, models={MODEL: model}) as tb:
        idea = tb.publish(Idea(title="quantum coffee"))
        tb.publish(Review(score=3), correlation_id=idea.correlation_id)
        await tb.run_until_idle()
        assert [v.payload.accepted for v in tb.artifacts(Verdict)] == [False]
    assert asked == ["quantum coffee: 3"]
