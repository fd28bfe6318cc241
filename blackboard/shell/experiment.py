"""``blackboard experiment <spec.yaml|py>``: every (policy, seed, load) of a spec on the
simulator, a comparison table (or ``--json``), and, with ``--traces DIR``, each run's spans and
``runs`` row through the observability package."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blackboard.errors import ConfigError
from blackboard.shell.sim.report import Summary, render, summarise
from blackboard.shell.sim.run import RunResult, simulate
from blackboard.shell.sim.workload import Experiment, load_spec
from scheduler.policies import as_spec


def add_experiment_parser(sub: Any) -> None:
    """Add ``experiment`` to the CLI's subparsers."""
    p = sub.add_parser("experiment", help="compare scheduling policies on the simulator")
    p.add_argument("spec", metavar="SPEC", help="experiment spec (.yaml or .py with EXPERIMENT)")
    p.add_argument("--policies", help="comma-separated policies (default: the spec's)")
    p.add_argument("--seeds", type=int, help="seeds per (policy, load) (default: the spec's)")
    p.add_argument("--load", help="comma-separated loads, e.g. 0.7,0.9 (default: the spec's)")
    p.add_argument("--jobs", type=int, help="jobs per run (default: the spec's)")
    p.add_argument("--traces", metavar="DIR", help="write each run's spans and runs row here")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise ConfigError(f"bad load list {text!r}: {exc}") from exc


def run_experiment(
    spec: Experiment,
    policies: Sequence[str],
    seeds: int,
    loads: Sequence[float],
    traces: Path | None = None,
) -> tuple[list[Summary], list[RunResult]]:
    """Run every (policy, seed, load); summaries per (policy, load) and every run.

    Raises:
        ConfigError: an unknown policy or a bad spec.
    """
    for policy in policies:
        as_spec(policy)
    summaries: list[Summary] = []
    runs: list[RunResult] = []
    for load in loads:
        for policy in policies:
            group = [_one(spec, policy, seed, load, traces) for seed in range(seeds)]
            runs.extend(group)
            summaries.append(summarise(group, spec.weights))
    return summaries, runs


def _one(spec: Experiment, policy: str, seed: int, load: float, traces: Path | None) -> RunResult:
    if traces is None:
        return simulate(spec, policy, seed, load)
    from observability.runs import RunInfo
    from observability.tracing import start_tracing

    info = RunInfo.create(
        scenario=f"experiment:{spec.name}",
        policy=policy,
        seed=seed,
        store="memory://",
        config={"load": load, "jobs": spec.jobs, "workload": spec.workload, "virtual_time": True},
    )
    with start_tracing(traces, info):
        return simulate(spec, policy, seed, load)


def cmd_experiment(args: argparse.Namespace) -> int:
    """``blackboard experiment``."""
    from blackboard.shell.cli.main import print_json

    spec = load_spec(args.spec)
    if args.jobs is not None:
        spec = spec.model_copy(update={"jobs": args.jobs})
    policies = [p.strip() for p in args.policies.split(",")] if args.policies else spec.policies
    loads = _floats(args.load) if args.load else spec.loads
    seeds = args.seeds if args.seeds is not None else spec.seeds
    if seeds < 1 or not policies or not loads:
        raise ConfigError("need at least one seed, policy and load")
    traces = Path(args.traces) if args.traces else None
    summaries, runs = run_experiment(spec, list(policies), seeds, loads, traces)
    if args.json:
        print_json(
            {
                "experiment": spec.name,
                "summaries": [s.as_dict() for s in summaries],
                "runs": [
                    {"policy": r.policy, "seed": r.seed, "load": r.load, "digest": r.digest,
                     "virtual_s": r.virtual_s, "wall_s": r.wall_s}
                    for r in runs
                ],
            }
        )  # fmt: skip
    else:
        print(f"experiment {spec.name}: {spec.jobs} jobs, {seeds} seeds, virtual seconds")
        print(render(summaries))
    return 0
