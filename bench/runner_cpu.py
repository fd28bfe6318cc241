"""CPU the runtime spends per record, without a broker: the runner's own cost.

``python -m bench.runner_cpu [--inputs N] [--repeats R] [--concurrency C] [--json]`` runs the
two-stage pipeline of :mod:`bench.pipeline` (A → B → C, handlers that do no work) on the
embedded store with the envelope carried as wire headers, as on Kafka and Redis (every record
is decoded from its ``bb.*`` headers and every output encoded to them), and prints the event
loop thread's CPU time per input (two handler runs) for each repeat, best and median.

The Kafka benchmark (:mod:`bench.kafka_pipeline`) is bound by this figure: its records/s is
about one over it once the broker keeps up, on a noisy 2-core machine best read from the
minimum of several repeats. Thread CPU time counts neither waiting nor other threads, so two
builds compared in one run on one machine differ by what their code costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

from agents.settings import RunnerSettings
from agents.worker import Worker
from bench.pipeline import A, build_app, registry
from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.stores.memory.store import MemoryStore


class WireMemoryStore(MemoryStore):
    """The embedded store, keeping records in their wire form (headers, not envelopes)."""

    keeps_envelopes = False


async def cpu_per_input(inputs: int, concurrency: int) -> float:
    """Microseconds of event-loop CPU per input through both stages."""
    board = Blackboard(
        WireMemoryStore(), registry=registry, settings=BlackboardSettings(partitions=8)
    )
    app = build_app(0.0, concurrency)
    board.ensure_topics(app.types())
    for first in range(0, inputs, 1000):  # published up front: not measured
        board.publish_many([A(n=i) for i in range(first, min(inputs, first + 1000))])
    worker = Worker(app, board, RunnerSettings())
    started = time.thread_time()
    task = asyncio.create_task(worker.run())
    await worker.started()
    while sum(r.stats.processed for r in worker.runners) < 2 * inputs:  # noqa: ASYNC110 - counts, no event
        await asyncio.sleep(0.005)
    cpu = time.thread_time() - started
    worker.stop()
    await task
    board.close()
    return cpu / inputs * 1e6


def run(inputs: int, repeats: int, concurrency: int) -> dict[str, Any]:
    """Every repeat's figure, and the best and median."""
    figures = []
    for i in range(repeats):
        figures.append(round(asyncio.run(cpu_per_input(inputs, concurrency)), 2))
        print(f"repeat {i + 1}/{repeats}: {figures[-1]:.1f} us per input", file=sys.stderr)
    return {
        "inputs": inputs,
        "concurrency": concurrency,
        "us_per_input": figures,
        "best_us": min(figures),
        "median_us": statistics.median(figures),
    }


def main() -> None:
    """Parse the options, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=20_000, help="inputs per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="repeats (best and median)")
    parser.add_argument("--concurrency", type=int, default=64, help="handler slots per agent")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    if args.inputs < 1 or args.repeats < 1 or args.concurrency < 1:
        parser.error("--inputs, --repeats and --concurrency must be >= 1")
    from blackboard.logs import configure_logging

    configure_logging("warning")
    doc = run(args.inputs, args.repeats, args.concurrency)
    if args.json:
        print(json.dumps(doc))
        return
    print(
        f"{doc['inputs']} inputs x 2 stages, concurrency {doc['concurrency']}: "
        f"best {doc['best_us']:.1f} us, median {doc['median_us']:.1f} us of event-loop CPU "
        "per input"
    )


if __name__ == "__main__":
    main()
