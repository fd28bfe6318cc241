"""The simulator: virtual time, bit-for-bit repeats, policies on fan-out/fan-in, the CLI."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from blackboard.shell.cli.main import main
from blackboard.shell.sim.loop import run_virtual
from blackboard.shell.sim.report import percentile
from blackboard.shell.sim.run import simulate
from blackboard.shell.sim.workload import Experiment, Service, Tenant, generate, load_spec


def test_virtual_time_jumps_to_the_next_timer() -> None:
    async def sleepers() -> float:
        await asyncio.gather(*(asyncio.sleep(i) for i in range(1000)))
        return asyncio.get_running_loop().time()

    started = time.perf_counter()
    assert run_virtual(sleepers) == pytest.approx(999.0, abs=1e-3)
    assert time.perf_counter() - started < 2.0


def test_a_10000_task_experiment_runs_in_seconds_and_repeats_bit_for_bit() -> None:
    spec = Experiment(jobs=2500, steps=4, concurrency=8)  # 10,000 handler calls
    first = simulate(spec, "srpt", seed=3, load=0.9)
    again = simulate(spec, "srpt", seed=3, load=0.9)
    other = simulate(spec, "srpt", seed=4, load=0.9)
    assert len(first.latencies) == 10_000
    assert first.wall_s < 20.0
    assert first.makespans == again.makespans and first.latencies == again.latencies
    assert first.digest == again.digest != other.digest


def test_workloads_are_seeded_and_bursts_add_jobs() -> None:
    spec = Experiment(
        jobs=500,
        tenants={"a": Tenant(), "b": Tenant()},
        bursts=({"tenant": "a", "factor": 10.0, "start": 0.2, "length": 0.1},),  # type: ignore[arg-type]
    )
    jobs = generate(spec, 1, 0.8)
    assert jobs == generate(spec, 1, 0.8)
    assert len(jobs) > 500
    assert [j.arrival for j in jobs] == sorted(j.arrival for j in jobs)
    pareto = Service(dist="bounded_pareto", alpha=1.5, low=1.0, high=50.0)
    import random

    rng = random.Random(0)
    draws = [pareto.draw(rng) for _ in range(20_000)]
    assert min(draws) >= 1.0 and max(draws) <= 50.0
    assert sum(draws) / len(draws) == pytest.approx(pareto.expected(), rel=0.05)


def test_srpt_beats_fifo_on_a_heavy_tail_and_join_aware_runs_fan_in() -> None:
    spec = Experiment(jobs=400, steps=3, concurrency=4)
    fifo = simulate(spec, "fifo", 1, 0.9)
    srpt = simulate(spec, "srpt", 1, 0.9)
    assert sum(srpt.makespans) < sum(fifo.makespans)
    fan = Experiment(workload="fanout", jobs=200, steps=4, concurrency=4)
    joined = simulate(fan, "join_aware", 1, 0.8)
    assert len(joined.makespans) == 200 and all(m > 0 for m in joined.makespans)


def test_drr_gives_weighted_shares_under_overload() -> None:
    spec = Experiment(
        jobs=600,
        steps=1,
        concurrency=2,
        service=Service(dist="lognormal", mean=1.0, sigma=0.5),
        tenants={"gold": Tenant(weight=3.0), "free": Tenant(weight=1.0)},
    )
    run = simulate(spec, "drr", 1, 1.5)
    assert run.service_share["gold"] / 0.75 >= 0.9
    fifo = simulate(spec, "fifo", 1, 1.5)
    assert fifo.service_share["gold"] < 0.6  # arrivals are half and half
    assert percentile(run.makespans, 0.5) > 0


def test_experiment_command_prints_a_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\njobs: 100\nsteps: 2\nconcurrency: 2\npolicies: [fifo]\n")
    assert load_spec(spec).jobs == 100
    assert main(["experiment", str(spec), "--policies", "fifo,plas", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "plas" in out and "mean makespan" in out
    assert main(["experiment", str(spec), "--seeds", "1", "--load", "0.5", "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["summaries"][0]["policy"] == "fifo" and doc["summaries"][0]["load"] == 0.5
    assert main(["experiment", str(spec), "--policies", "nope"]) == 2


def test_experiment_with_traces_writes_a_run_per_policy_and_seed(tmp_path: Path) -> None:
    from observability.segments import list_runs

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\njobs: 30\nsteps: 2\nconcurrency: 2\n")
    traces = tmp_path / "traces"
    argv = ["experiment", str(spec), "--policies", "fifo,srpt", "--seeds", "2", "--json"]
    assert main([*argv, "--traces", str(traces)]) == 0
    assert len(list_runs(traces)) == 4
