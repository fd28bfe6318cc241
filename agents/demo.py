"""The demo: a small research workflow with simulated agents (seeded latencies, no network).

::

    Idea ──► novelty ────┐
    │    ├─► feasibility ├─► Review ──┐
    │    └─► impact ─────┘            ├─► chair (joins an idea and its three reviews) ──► Verdict
    └─────────────────────────────────┘

The three reviewers are separate agents (consumer groups) working in parallel; the chair is a
join (:meth:`agents.App.join`): it holds the idea and the reviews seen so far per correlation id
in its keyed state, committed with its input offsets, and decides when the set is complete.

With ``llm`` (``blackboard demo --llm local``, or ``--llm openai:gpt-4o-mini`` with a key set)
the reviewers and the chair ask a language model instead (:meth:`agents.Context.llm`): each
reviewer for a :class:`Score`, the chair for a :class:`Decision`. An answer that never
validates is dead-lettered (stage ``llm_output``); its idea then ends without a verdict.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from agents.agent import App, Handler
from agents.collected import JoinSet
from agents.context import Context
from agents.llm.models import parse_model
from agents.llm.settings import LLMSettings
from agents.settings import RunnerSettings
from agents.worker import Worker
from blackboard.artifacts import TypeRegistry, artifact, output_id
from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.records import TopicPartition
from blackboard.redact import redact_url

registry = TypeRegistry()
ASPECTS = ("novelty", "feasibility", "impact")


@artifact("research.Idea", version=1, registry=registry)
class Idea(BaseModel):
    """A research idea to be reviewed."""

    title: str
    summary: str = ""


@artifact("research.Review", version=1, registry=registry)
class Review(BaseModel):
    """One reviewer's score of an idea."""

    idea_id: str
    aspect: str
    score: int = Field(ge=1, le=10)


@artifact("research.Verdict", version=1, registry=registry)
class Verdict(BaseModel):
    """The chair's decision, once all reviews are in."""

    idea_id: str
    scores: dict[str, int]
    accepted: bool


class Score(BaseModel):
    """What an LLM reviewer answers."""

    score: int = Field(ge=1, le=10)


class Decision(BaseModel):
    """What the LLM chair answers."""

    accepted: bool


@dataclass(frozen=True, slots=True)
class Simulation:
    """Knobs of the simulated agents: the seed of scores and latencies, the median latency;
    ``llm``: the model the agents ask instead (None: simulated)."""

    seed: int = 7
    latency_s: float = 0.02
    llm: str | None = None


def _rng(seed: int, *parts: str) -> random.Random:
    """A generator seeded by the run seed and the work item, so runs repeat exactly."""
    return random.Random(seed ^ zlib.crc32("|".join(parts).encode()))


def _reviewer(aspect: str, sim: Simulation) -> Handler:
    if sim.llm is not None:
        return _llm_reviewer(aspect, sim.llm)

    async def review(idea: Idea, ctx: Context) -> Review:
        rng = _rng(sim.seed, aspect, ctx.envelope.id)
        await asyncio.sleep(rng.lognormvariate(0, 0.5) * sim.latency_s)
        return Review(idea_id=ctx.envelope.id, aspect=aspect, score=rng.randint(1, 10))

    return review


def _llm_reviewer(aspect: str, model: str) -> Handler:
    async def review(idea: Idea, ctx: Context) -> Review:
        answer = await ctx.llm(
            Score,
            f"Idea: {idea.title}. {idea.summary}",
            model=model,
            system=f"You review research ideas for their {aspect}. Score it from 1 to 10.",
            max_tokens=40,
        )
        return Review(idea_id=ctx.envelope.id, aspect=aspect, score=answer.score)

    return review


async def _decide(sim: Simulation, idea: BaseModel, scores: dict[str, int], ctx: Context) -> bool:
    if sim.llm is None:
        await asyncio.sleep(sim.latency_s / 4)
        return sum(scores.values()) >= 18
    listed = ", ".join(f"{aspect} {score}/10" for aspect, score in sorted(scores.items()))
    decision = await ctx.llm(
        Decision,
        f"Idea: {getattr(idea, 'title', '')}. Reviews: {listed}. Accept it?",
        model=sim.llm,
        system="You chair a review panel and decide whether to accept an idea.",
        max_tokens=20,
    )
    return decision.accepted


def build_app(sim: Simulation | None = None) -> App:
    """The workflow's agents: three reviewers in parallel and the chair that joins them."""
    sim = sim or Simulation()
    app = App("research-demo", registry=registry)
    for aspect in ASPECTS:
        reviewer = _reviewer(aspect, sim)
        app.add(reviewer, consumes=Idea, publishes=Review, name=aspect, concurrency=256)

    # One idea and its three reviews share the idea's correlation id (outputs inherit it), which
    # is the default join key and partition key: one worker holds the whole set.
    @app.join(consumes={Idea: 1, Review: len(ASPECTS)}, publishes=Verdict, concurrency=256)
    async def chair(parts: JoinSet, ctx: Context) -> Verdict:
        """Decide once the idea and all its reviews are in."""
        [idea] = parts.of(Idea)
        scores = {r.aspect: r.score for r in parts[Review]}
        accepted = await _decide(sim, idea.artifact.payload, scores, ctx)
        return Verdict(idea_id=idea.artifact.envelope.id, scores=scores, accepted=accepted)

    return app


#: The demo app with default knobs (``blackboard worker agents.demo:app``).
app = build_app()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1))))
    return sorted_values[rank]


async def run_demo(
    *,
    ideas: int = 50,
    seed: int = 7,
    latency_ms: float = 20.0,
    url: str = "memory://",
    partitions: int = 8,
    traces: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    llm: str | None = None,
    llm_settings: LLMSettings | None = None,
) -> dict[str, Any]:
    """Run the workflow for ``ideas`` ideas and return its figures (see :func:`summarize`).

    With ``traces`` (a directory), the run is traced into it (as run ``run_id``, default a new
    id) and the figures gain a ``traces`` entry: the directory, run id, segment and span counts.
    With ``llm`` (a model string; ``local`` means ``local:smollm2``) the agents ask that model
    and the figures gain an ``llm`` entry: calls, tokens, cost, re-asks, failures, and the
    dead letters (``llm_settings``: the cassette and re-asks; None: ``BLACKBOARD_LLM_*``).
    """
    sim = Simulation(seed=seed, latency_s=latency_ms / 1000, llm=_model(llm))
    if traces is None:
        return await _run_workflow(ideas, sim, url, partitions, llm_settings)
    from observability.runs import RunInfo
    from observability.tracing import start_tracing

    run = RunInfo.create(
        scenario="research-demo",
        seed=seed,
        store=url,
        config={"ideas": ideas, "latency_ms": latency_ms, "partitions": partitions},
        run_id=run_id,
    )
    tracing = start_tracing(traces, run)
    try:
        summary = await _run_workflow(ideas, sim, url, partitions, llm_settings)
    finally:
        counts = tracing.stop()  # after the worker stopped: its last commits are in
    summary["traces"] = {
        "dir": str(tracing.traces_dir),
        "run_id": run.run_id,
        "segment": str(tracing.path),
        "spans_ended": counts.ended,
        "spans_written": counts.written,
    }
    return summary


def _model(llm: str | None) -> str | None:
    return "local:smollm2" if llm == "local" else llm


async def _run_workflow(
    ideas: int, sim: Simulation, url: str, partitions: int, llm_settings: LLMSettings | None
) -> dict[str, Any]:
    seed = sim.seed
    demo_app = build_app(sim)
    board = Blackboard(
        url, registry=registry, settings=BlackboardSettings(url=url, partitions=partitions)
    )
    worker = Worker(
        demo_app,
        board,
        RunnerSettings(commit_interval_ms=10, idle_poll_s=0.05),
        llm=llm_settings,
    )
    board.ensure_topics(demo_app.types())
    task = asyncio.create_task(worker.run())
    try:
        await worker.started()
        rng = random.Random(seed)
        started = time.time()
        board.publish_many(
            [Idea(title=f"idea {i}", summary=f"{rng.random():.6f}") for i in range(ideas)],
            artifact_ids=[output_id("demo", [str(seed)], i) for i in range(ideas)],  # repeatable
        )
        deadline = time.monotonic() + (120 if sim.llm is None else 120 + 60 * ideas)
        while _count(board, "research.Verdict") + len(_dead_ideas(board)) < ideas:
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"demo did not finish: {_count(board, 'research.Verdict')}/{ideas} verdicts"
                )
            await asyncio.sleep(0.005 if sim.llm is None else 0.1)
        summary = summarize(board, started, seed=seed, ideas=ideas)
        if sim.llm is not None:
            summary["llm"] = {"model": parse_model(sim.llm).shown, **worker.llm.stats.as_dict()}
            summary["dead_letters"] = _dead_letters(board)
        return summary
    finally:
        worker.stop()
        await task
        board.close()


def _dead_records(board: Blackboard) -> list[Any]:
    found = []
    for type_name in ("research.Idea", "research.Review"):
        topic = board.topics.dlq(board.topics.for_type(type_name))
        for partition in range(board.settings.partitions):
            found.extend(board.store.read(TopicPartition(topic, partition), 0, 1_000_000))
    return found


def _dead_ideas(board: Blackboard) -> set[bytes]:
    """Correlation ids of ideas a dead letter stopped (no verdict will come)."""
    return {r.header("bb.correlation_id") or b"" for r in _dead_records(board)}


def _dead_letters(board: Blackboard) -> dict[str, int]:
    """Dead letters per stage."""
    stages: Counter[str] = Counter(
        (r.header("bb.dlq.stage") or b"?").decode() for r in _dead_records(board)
    )
    return dict(sorted(stages.items()))


def _count(board: Blackboard, type_name: str) -> int:
    topic = board.topics.for_type(type_name)
    return sum(board.store.end_offsets([topic]).values())


def summarize(board: Blackboard, started: float, *, seed: int, ideas: int) -> dict[str, Any]:
    """Artifacts per type, makespan and end-to-end latency (idea published → verdict)."""
    counts: Counter[str] = Counter()
    created: dict[str, float] = {}
    verdicts: list[tuple[str, float]] = []
    for type_name in ("research.Idea", "research.Review", "research.Verdict"):
        for art in board.read(type_name):
            counts[type_name] += 1
            ts = art.envelope.created_at.timestamp()
            if type_name == "research.Idea":
                created[art.id] = ts
            elif type_name == "research.Verdict":
                verdicts.append((art.envelope.correlation_id, ts))
    latencies = sorted((ts - created[corr]) * 1000 for corr, ts in verdicts if corr in created)
    last = max((ts for _, ts in verdicts), default=started)
    accepted = sum(
        1 for art in board.read("research.Verdict") if getattr(art.payload, "accepted", False)
    )
    return {
        "store": redact_url(board.store.url),
        "seed": seed,
        "ideas": ideas,
        "artifacts": dict(sorted(counts.items())),
        "accepted": accepted,
        "makespan_ms": round((last - started) * 1000, 3),
        "latency_ms": {
            "p50": round(_percentile(latencies, 0.50), 3),
            "p95": round(_percentile(latencies, 0.95), 3),
            "p99": round(_percentile(latencies, 0.99), 3),
        },
    }
