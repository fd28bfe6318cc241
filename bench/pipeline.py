"""Throughput, latency and memory of the embedded store: a two-agent pipeline A → B → C.

``python -m bench.pipeline [--json]`` prints, for 1k, 10k and 100k inputs with handlers that
do no work: final artifacts/s, agent runs/s and peak RSS (each size in its own process, so the
peaks do not mix); then the makespan of 1,000 inputs through two 10 ms handlers with a
concurrency cap of 1,000. Targets (issue 2): ≥ 13,000 final artifacts/s at 10k with RSS
≤ 150 MB, flat across sizes; makespan ≤ 0.2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from typing import Any

from pydantic import BaseModel

from agents.agent import App
from agents.context import Context
from agents.settings import RunnerSettings
from agents.worker import Worker
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.blackboard import Blackboard, BlackboardSettings

registry = TypeRegistry()


@artifact("bench.A", registry=registry)
class A(BaseModel):
    n: int


@artifact("bench.B", registry=registry)
class B(BaseModel):
    n: int


@artifact("bench.C", registry=registry)
class C(BaseModel):
    n: int


def build_app(latency_s: float, concurrency: int) -> App:
    """The pipeline: ``ab`` turns A into B, ``bc`` turns B into C."""
    app = App("bench", registry=registry)

    async def ab(a: A, ctx: Context) -> B:
        if latency_s:
            await asyncio.sleep(latency_s)
        return B(n=a.n)

    async def bc(b: B, ctx: Context) -> C:
        if latency_s:
            await asyncio.sleep(latency_s)
        return C(n=b.n)

    app.add(ab, consumes=A, publishes=B, concurrency=concurrency)
    app.add(bc, consumes=B, publishes=C, concurrency=concurrency)
    return app


async def run_pipeline(
    inputs: int, *, latency_s: float = 0.0, concurrency: int = 1000
) -> dict[str, Any]:
    """Publish ``inputs`` A artifacts and time until every C is committed."""
    board = Blackboard("memory://", registry=registry, settings=BlackboardSettings(partitions=8))
    app = build_app(latency_s, concurrency)
    worker = Worker(app, board, RunnerSettings())
    board.ensure_topics(app.types())
    task = asyncio.create_task(worker.run())
    await worker.started()
    c_topic = board.topics.for_type("bench.C")
    started = time.perf_counter()
    for first in range(0, inputs, 1000):  # a producer publishing in chunks, holding none
        board.publish_many([A(n=i) for i in range(first, min(inputs, first + 1000))])
    while sum(board.store.end_offsets([c_topic]).values()) < inputs:  # noqa: ASYNC110 - polls the store, no event to wait on
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - started
    worker.stop()
    await task
    board.close()
    return {
        "inputs": inputs,
        "seconds": round(elapsed, 4),
        "final_artifacts_per_s": round(inputs / elapsed),
        "agent_runs_per_s": round(2 * inputs / elapsed),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _child(inputs: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.pipeline", "--one", str(inputs)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> None:
    """Run every measurement and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="1000,10000,100000", help="input counts")
    args = parser.parse_args()
    from blackboard.logs import configure_logging

    configure_logging("warning")
    if args.one:
        print(json.dumps(asyncio.run(run_pipeline(args.one))))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    scale = []
    for n in sizes:
        scale.append(_child(n))
        print(f"  {n:>7} inputs: {scale[-1]['final_artifacts_per_s']:>7} final/s", file=sys.stderr)
    latency = asyncio.run(run_pipeline(1000, latency_s=0.010, concurrency=1000))
    doc = {
        "no_latency": scale,
        "latency_10ms_cap_1000": {"inputs": 1000, "makespan_s": latency["seconds"]},
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"{'inputs':>8} {'final/s':>9} {'runs/s':>9} {'peak RSS MB':>12}")
    for row in scale:
        print(
            f"{row['inputs']:>8} {row['final_artifacts_per_s']:>9} {row['agent_runs_per_s']:>9}"
            f" {row['peak_rss_mb']:>12}"
        )
    print(f"1000 inputs, 2 x 10 ms handlers, cap 1000: makespan {latency['seconds']:.3f} s")


if __name__ == "__main__":
    main()
