"""Scheduling policies on the simulator (virtual time, seeded): the figures of the admission
issue, printed, not asserted.

``python -m bench.scheduling [--seeds 5] [--jobs 2000] [--json]`` prints:

1. heavy-tailed three-step jobs (bounded Pareto, alpha 1.1) at load 0.9: ``srpt`` and ``plas``
   against ``fifo`` — mean, p50 and p99 makespan;
2. fan-out/fan-in (each job fans out into 4 parts joined again) at load 0.9: ``join_aware``
   against ``srpt`` and ``fifo`` on mean makespan;
3. ``drr`` with weights 3:1, equal arrivals, under overload (load 2.0: each tenant alone would
   fill the agent, so both stay backlogged): each tenant's share of service time over its
   weighted share, for ``drr`` and ``drr+srpt`` charged by service time (the default) and by
   records;
4. burst isolation: three equal tenants at load 0.7, then one of them sends 10x its rate for a
   tenth of the run: the other tenants' p99 makespan with and without the burst, under
   ``drr`` (by time and by records) and ``fifo``.

Every figure is a mean over seeds of one run per seed (95% interval across seeds).

With ``--kafka`` (and ``--bootstrap HOST:PORT``, else a local broker is started) it also runs
the heavy-tailed workload, smaller and scaled to real milliseconds, on a real Kafka broker
with ``fifo``, ``srpt`` and ``plas``, to compare the ordering of the policies.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from typing import Any

from blackboard.logs import configure_logging
from blackboard.shell.sim.report import Estimate, estimate, percentile, tenant_p99
from blackboard.shell.sim.run import RunResult, run_real, simulate
from blackboard.shell.sim.workload import Burst, Experiment, Service, Tenant


def _runs(spec: Experiment, policy: str, seeds: int, load: float) -> list[RunResult]:
    return [simulate(spec, policy, seed, load) for seed in range(seeds)]


def _mean(runs: Sequence[RunResult]) -> Estimate:
    return estimate([statistics.fmean(r.makespans) for r in runs])


def _pct(runs: Sequence[RunResult], q: float) -> Estimate:
    return estimate([percentile(r.makespans, q) for r in runs])


def _change(new: Estimate, old: Estimate) -> float:
    return (new.mean - old.mean) / old.mean * 100.0


def heavy_tail(seeds: int, jobs: int) -> dict[str, Any]:
    """Figure 1: srpt and plas against fifo."""
    spec = Experiment(name="heavy-tail", jobs=jobs, steps=3, concurrency=8, aging=0.05)
    out: dict[str, Any] = {}
    for policy in ("fifo", "srpt", "plas"):
        runs = _runs(spec, policy, seeds, 0.9)
        out[policy] = {"mean": _mean(runs), "p50": _pct(runs, 0.5), "p99": _pct(runs, 0.99)}
    return out


def fan_in(seeds: int, jobs: int) -> dict[str, Any]:
    """Figure 2: join_aware against srpt (and fifo) on fan-out/fan-in."""
    spec = Experiment(
        name="fan-in",
        workload="fanout",
        jobs=jobs // 2,
        steps=4,
        concurrency=8,
        service=Service(dist="bounded_pareto", alpha=1.1, low=0.1, high=30.0),
    )
    out: dict[str, Any] = {}
    for policy in ("fifo", "srpt", "join_aware"):
        runs = _runs(spec, policy, seeds, 0.9)
        out[policy] = {"mean": _mean(runs), "p99": _pct(runs, 0.99)}
    return out


def fair_share(seeds: int, jobs: int) -> dict[str, Any]:
    """Figure 3: drr shares over weighted shares under overload."""
    spec = Experiment(
        name="drr",
        jobs=jobs,
        steps=1,
        concurrency=8,
        service=Service(dist="lognormal", mean=1.0, sigma=1.0),
        tenants={"gold": Tenant(weight=3.0), "free": Tenant(weight=1.0)},
    )
    by_records = spec.model_copy(update={"drr_charge": "records"})
    out: dict[str, Any] = {}
    for label, policy, variant in (
        ("fifo", "fifo", spec),
        ("drr", "drr", spec),
        ("drr records", "drr", by_records),
        ("drr+srpt", "drr+srpt", spec),
        ("drr+srpt records", "drr+srpt", by_records),
    ):
        runs = _runs(variant, policy, seeds, 2.0)
        out[label] = {
            t: estimate([r.service_share[t] / (w / 4.0) for r in runs])
            for t, w in (("gold", 3.0), ("free", 1.0))
        }
    return out


def burst(seeds: int, jobs: int) -> dict[str, Any]:
    """Figure 4: the quiet tenants' p99 makespan with and without a 10x burst."""
    tenants = {n: Tenant() for n in ("a", "b", "c")}
    base = Experiment(
        name="burst",
        jobs=jobs,
        steps=1,
        concurrency=8,
        service=Service(dist="lognormal", mean=1.0, sigma=1.0),
        tenants=tenants,
    )
    noisy = base.model_copy(
        update={"bursts": (Burst(tenant="a", factor=10.0, start=0.3, length=0.1),)}
    )
    out: dict[str, Any] = {}
    for label, policy, charge in (
        ("fifo", "fifo", "time"),
        ("drr", "drr", "time"),
        ("drr records", "drr", "records"),
    ):
        calm = _runs(base.model_copy(update={"drr_charge": charge}), policy, seeds, 0.7)
        loud = _runs(noisy.model_copy(update={"drr_charge": charge}), policy, seeds, 0.7)
        quiet = ("b", "c")
        before = estimate([statistics.fmean(tenant_p99(r, t) for t in quiet) for r in calm])
        after = estimate([statistics.fmean(tenant_p99(r, t) for t in quiet) for r in loud])
        out[label] = {"quiet_p99_calm": before, "quiet_p99_burst": after}
    return out


def on_kafka(seeds: int, jobs: int, bootstrap: str | None) -> dict[str, Any]:
    """The heavy-tail comparison on a real Kafka broker, in real time (x0.1 scale)."""
    import os

    from agents.settings import RunnerSettings
    from bench.kafka_pipeline import kafka_broker

    spec = Experiment(
        name="heavy-tail-kafka",
        jobs=jobs,
        steps=3,
        concurrency=8,
        service=Service(dist="bounded_pareto", alpha=1.1, low=0.1, high=10.0),
        aging=0.05,
    )
    settings = RunnerSettings(commit_interval_ms=10.0, idle_poll_s=0.2, shutdown_grace_s=5.0)
    out: dict[str, Any] = {}
    with kafka_broker(bootstrap) as (address, *_):
        for policy in ("fifo", "srpt", "plas"):
            runs = [
                run_real(
                    spec,
                    policy,
                    seed,
                    0.8,
                    url=f"kafka://{address}",
                    prefix=f"sched-{policy}-{seed}-{os.getpid()}",
                    scale=0.1,
                    settings=settings,
                )
                for seed in range(seeds)
            ]
            out[policy] = {"mean": _mean(runs), "p50": _pct(runs, 0.5), "p99": _pct(runs, 0.99)}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Run every figure and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--kafka", action="store_true", help="also compare on a real broker")
    parser.add_argument("--bootstrap", help="Kafka HOST:PORT (default: start a local broker)")
    parser.add_argument("--kafka-jobs", type=int, default=400)
    parser.add_argument("--only-kafka", action="store_true", help="skip the simulator figures")
    args = parser.parse_args(argv)
    configure_logging("warning", json=True)
    figures: dict[str, Any] = {}
    if args.kafka or args.only_kafka:
        figures["kafka"] = on_kafka(min(args.seeds, 3), args.kafka_jobs, args.bootstrap)
    if args.only_kafka:
        _print_kafka(figures["kafka"], args.kafka_jobs)
        return
    figures.update(
        heavy_tail=heavy_tail(args.seeds, args.jobs),
        fan_in=fan_in(args.seeds, args.jobs),
        fair_share=fair_share(args.seeds, args.jobs),
        burst=burst(args.seeds, args.jobs),
    )
    if args.json:
        print(json.dumps(figures, default=lambda e: {"mean": e.mean, "ci95": e.half_width}))
        return
    ht = figures["heavy_tail"]
    print(f"1. heavy tail, load 0.9, {args.seeds} seeds, {args.jobs} jobs (virtual s)")
    for p in ("fifo", "srpt", "plas"):
        f = ht[p]
        print(f"   {p:5} mean {f['mean']}  p50 {f['p50']}  p99 {f['p99']}")
    print(
        f"   srpt vs fifo: mean {_change(ht['srpt']['mean'], ht['fifo']['mean']):+.1f}%, "
        f"p99 {_change(ht['srpt']['p99'], ht['fifo']['p99']):+.1f}%"
    )
    print(
        f"   plas vs fifo: p50 {_change(ht['plas']['p50'], ht['fifo']['p50']):+.1f}%, "
        f"p99 {_change(ht['plas']['p99'], ht['fifo']['p99']):+.1f}%"
    )
    fi = figures["fan_in"]
    print("2. fan-out/fan-in (4 parts), load 0.9")
    for p in ("fifo", "srpt", "join_aware"):
        print(f"   {p:10} mean {fi[p]['mean']}  p99 {fi[p]['p99']}")
    print(
        f"   join_aware vs srpt: mean {_change(fi['join_aware']['mean'], fi['srpt']['mean']):+.1f}%"
    )
    fs = figures["fair_share"]
    print("3. drr weights gold 3 : free 1, load 2.0 (share of service time / weighted share)")
    for p in fs:
        print(f"   {p:16} gold {fs[p]['gold']}  free {fs[p]['free']}")
    bu = figures["burst"]
    print("4. 10x burst from tenant a (load 0.7): p99 makespan of tenants b, c")
    for p in bu:
        calm, loud = bu[p]["quiet_p99_calm"], bu[p]["quiet_p99_burst"]
        print(f"   {p:11} calm {calm}  burst {loud}  change {_change(loud, calm):+.1f}%")
    if "kafka" in figures:
        _print_kafka(figures["kafka"], args.kafka_jobs)


def _print_kafka(fig: dict[str, Any], jobs: int) -> None:
    print(f"5. heavy tail on Kafka, load 0.8, {jobs} jobs, real time x0.1 (in virtual s)")
    for p in ("fifo", "srpt", "plas"):
        f = fig[p]
        print(f"   {p:5} mean {f['mean']}  p50 {f['p50']}  p99 {f['p99']}")


if __name__ == "__main__":
    main()
