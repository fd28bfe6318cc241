"""LLM agents against the benchmarks' model server (:mod:`bench.llm_server`), over real HTTP
through the OpenAI adapter.

``python -m bench.llm [--json]`` prints three figures:

- **overhead**: ``--inputs`` (1,000) inputs to an LLM agent whose model answers in
  ``--latency-s`` (2 s), concurrency 1,000 (target ≤ 2.2 s): once with the model a stand-in
  that sleeps (the runtime alone: ctx.llm, limits, validation, the loop), once through the
  OpenAI adapter over real HTTP to the latency server in a process of its own (the SDK and
  the HTTP stack included); each with the worker process's CPU per call;
- **429 convergence**: two workers (each with its own model runtime, as two processes would
  have) with more work than the limit allows, for ``--seconds``, against a server that
  answers 429 above ``--max-rate`` requests/s without saying so: the share of calls answered
  429 (target ≤ 2%) and the throughput against that rate (target ≥ 90%) over the last
  ``--measure-s`` seconds, and over the whole run (the first burst included);
- **cassette replay**: the overhead run recorded to a cassette and replayed: outputs
  bit-identical, and how much faster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agents.agent import App
from agents.context import Context
from agents.llm import FunctionModel, LLMRequest
from agents.llm.settings import LLMSettings
from agents.settings import RunnerSettings
from agents.worker import Worker
from bench.llm_server import LatencyServer
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.blackboard import Blackboard, BlackboardSettings

registry = TypeRegistry()


@artifact("benchllm.Ask", registry=registry)
class Ask(BaseModel):
    n: int


@artifact("benchllm.Answer", registry=registry)
class Answer(BaseModel):
    n: int


def build_app(model: str, concurrency: int) -> App:
    """One LLM agent: each Ask answered by the model as an Answer."""
    app = App("bench-llm", registry=registry)

    @app.agent(consumes=Ask, publishes=Answer, concurrency=concurrency, model=model)
    async def asker(ask: Ask, ctx: Context) -> Answer:
        answer = await ctx.llm(Answer, f"Ask {ask.n}")
        return Answer(n=ask.n * 1000 + answer.n)

    return app


SETTINGS = RunnerSettings(commit_interval_ms=20, idle_poll_s=0.05, max_buffered=20_000)


async def run_agents(
    server: LatencyServer | _Remote | None,
    inputs: int,
    concurrency: int,
    *,
    workers: int = 1,
    llm: LLMSettings | None = None,
    timeout_s: float = 600.0,
    models: dict[str, Any] | None = None,
) -> tuple[float, list[bytes], list[Worker]]:
    """Publish ``inputs`` Asks and run ``workers`` workers until every Answer is committed:
    (makespan, the answers' values sorted, the workers). Without a server the model is the
    ``stand-in`` of ``models``."""
    model = "stand-in" if server is None else f"openai:bench?base_url={server.base_url}"
    app = build_app(model, concurrency)
    board = Blackboard(
        "memory://", registry=registry, settings=BlackboardSettings(url="memory://", partitions=8)
    )
    board.ensure_topics(app.types())
    pool = [
        Worker(app, board, SETTINGS, slot=str(i), llm=llm or LLMSettings(), models=models)
        for i in range(workers)
    ]
    tasks = [asyncio.create_task(w.run()) for w in pool]
    try:
        await asyncio.gather(*(w.started() for w in pool))
        topic = board.topics.for_type("benchllm.Answer")
        started = time.monotonic()
        board.publish_many([Ask(n=i) for i in range(inputs)])
        deadline = started + timeout_s
        while sum(board.store.end_offsets([topic]).values()) < inputs:
            for task in tasks:
                if task.done():
                    task.result()
            if time.monotonic() > deadline:
                raise TimeoutError("the agents did not finish")
            await asyncio.sleep(0.005)
        makespan = time.monotonic() - started
        values = sorted(a.payload.model_dump_json().encode() for a in board.read(Answer))
        return makespan, values, pool
    finally:
        for w in pool:
            w.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        board.close()


class _Remote:
    """The latency server in a process of its own (its CPU is not the runtime's)."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.base_url = ""
        self._proc: subprocess.Popen[str] | None = None

    async def __aenter__(self) -> _Remote:
        self._proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurement
            [sys.executable, "-m", "bench.llm_server", str(self.latency_s)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        port = await asyncio.to_thread(self._proc.stdout.readline)
        self.base_url = f"http://127.0.0.1:{int(port)}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)


async def overhead(inputs: int, latency_s: float, cassette: Path | None) -> dict[str, Any]:
    """The makespan and CPU per call of ``inputs`` calls answered in ``latency_s``: with a
    stand-in model (the runtime alone) and over HTTP through the OpenAI adapter."""
    out: dict[str, Any] = {"inputs": inputs, "latency_s": latency_s}

    async def sleepy(request: LLMRequest) -> str:
        await asyncio.sleep(latency_s)
        return '{"n": 1}'

    stand_in = FunctionModel(sleepy, provider="openai", structured="json_schema")
    cpu = time.process_time()
    makespan, _, _ = await run_agents(None, inputs, 1000, models={"stand-in": stand_in})
    out["runtime_makespan_s"] = round(makespan, 3)
    out["runtime_cpu_ms_per_call"] = round((time.process_time() - cpu) * 1000 / inputs, 3)
    async with _Remote(latency_s) as server:
        cpu = time.process_time()
        llm = LLMSettings(cassette=cassette, cassette_mode="record") if cassette else None
        makespan, values, _ = await run_agents(server, inputs, 1000, llm=llm)
        cpu = time.process_time() - cpu
    out["http_makespan_s"] = round(makespan, 3)
    out["http_cpu_ms_per_call"] = round(cpu * 1000 / inputs, 3)
    out["answers"] = values
    return out


async def convergence(max_rate: float, seconds: float, measure_s: float) -> dict[str, Any]:
    """Two workers against a server that 429s above ``max_rate``, for ``seconds`` with more
    work than they can do: the share of calls answered 429 and the throughput against that
    rate over the last ``measure_s`` seconds (both workers busy throughout), and over the
    whole run."""
    model_server = LatencyServer(0.05, max_rate=max_rate)
    async with model_server as server:
        model = f"openai:bench?base_url={server.base_url}"
        app = build_app(model, 200)
        board = Blackboard(
            "memory://",
            registry=registry,
            settings=BlackboardSettings(url="memory://", partitions=8),
        )
        board.ensure_topics(app.types())
        pool = [Worker(app, board, SETTINGS, slot=str(i), llm=LLMSettings()) for i in range(2)]
        tasks = [asyncio.create_task(w.run()) for w in pool]
        try:
            await asyncio.gather(*(w.started() for w in pool))
            board.publish_many([Ask(n=i) for i in range(int(max_rate * seconds * 2))])
            started = time.monotonic()
            await asyncio.sleep(seconds)
        finally:
            for w in pool:
                w.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            board.close()
        stats = server.stats
    end = started + seconds
    ok = [t for t in stats.ok_times if end - measure_s <= t <= end]
    limited = [t for t in stats.limited_times if end - measure_s <= t <= end]
    gates = [g for w in pool for g in w.llm.gates.stats().values()]
    return {
        "max_rate": max_rate,
        "seconds": seconds,
        "answered": stats.ok,
        "answered_429": stats.rate_limited,
        "share_429_all": round(stats.rate_limited / max(1, stats.ok + stats.rate_limited), 4),
        "share_429_settled": round(len(limited) / max(1, len(ok) + len(limited)), 4),
        "throughput_ratio_settled": round(len(ok) / measure_s / max_rate, 3),
        "throughput_ratio_all": round(
            stats.ok / max(1e-9, max(stats.ok_times) - started) / max_rate, 3
        ),
        "rates": [round(w.llm.gates.of(f"openai@{server.base_url}").rate or 0, 1) for w in pool],
        "rate_decreases": sum(g.decreases for g in gates),
    }


async def replay(inputs: int, latency_s: float) -> dict[str, Any]:
    """Record a run to a cassette and replay it: identical answers, and the speed-up."""
    with tempfile.TemporaryDirectory() as tmp:
        cassette = Path(tmp) / "bench.jsonl"
        recorded = await overhead(inputs, latency_s, cassette)
        async with LatencyServer(latency_s) as server:
            llm = LLMSettings(cassette=cassette, cassette_mode="replay")
            makespan, values, _ = await run_agents(server, inputs, 1000, llm=llm)
            called = server.stats.ok
    return {
        "inputs": inputs,
        "recorded_s": recorded["http_makespan_s"],
        "replayed_s": round(makespan, 3),
        "speedup": round(recorded["http_makespan_s"] / makespan, 2),
        "identical": values == recorded["answers"],
        "model_calls_in_replay": called,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    print("overhead ...", file=sys.stderr)
    result = await overhead(args.inputs, args.latency_s, None)
    result.pop("answers")
    out["overhead"] = result
    print("429 convergence ...", file=sys.stderr)
    out["convergence"] = await convergence(args.max_rate, args.seconds, args.measure_s)
    print("cassette replay ...", file=sys.stderr)
    out["replay"] = await replay(args.inputs, args.latency_s)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.llm", description=__doc__)
    parser.add_argument("--inputs", type=int, default=1000)
    parser.add_argument("--latency-s", type=float, default=2.0)
    parser.add_argument("--max-rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--measure-s", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.inputs < 1 or args.seconds <= args.measure_s + 5 or args.max_rate <= 0:
        parser.error("--inputs must be >= 1, --seconds > --measure-s + 5, --max-rate > 0")
    from blackboard.logs import configure_logging

    configure_logging("warning", json=True)
    out = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(out))
    else:
        for name, figures in out.items():
            print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
