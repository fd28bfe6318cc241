"""Summaries of simulated runs: per (policy, load), the mean over seeds of each run's figure
with a Student-t confidence interval across seeds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from blackboard.shell.sim.run import RunResult


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank (0.0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[min(rank, len(ordered) - 1)]


@dataclass(frozen=True, slots=True)
class Estimate:
    """A mean over seeds and the half-width of its confidence interval."""

    mean: float
    half_width: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.half_width:.3f}"


def estimate(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and t-interval half-width of per-seed values (half-width 0 for one seed)."""
    from observability.compare import t_quantile

    mean = statistics.fmean(values)
    if len(values) < 2:
        return Estimate(mean, 0.0)
    sd = statistics.stdev(values)
    t = t_quantile(0.5 + confidence / 2, len(values) - 1)
    return Estimate(mean, t * sd / math.sqrt(len(values)))


@dataclass(frozen=True, slots=True)
class Summary:
    """One (policy, load) over its seeds."""

    policy: str
    load: float
    seeds: int
    mean_makespan: Estimate
    p50_makespan: Estimate
    p99_makespan: Estimate
    p99_latency: Estimate
    share_ratio: dict[str, Estimate]
    """Per tenant: its share of service divided by its weighted share (1.0 = exactly fair)."""
    wall_s: float

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view."""

        def pair(e: Estimate) -> dict[str, float]:
            return {"mean": e.mean, "ci95": e.half_width}

        return {
            "policy": self.policy,
            "load": self.load,
            "seeds": self.seeds,
            "mean_makespan_s": pair(self.mean_makespan),
            "p50_makespan_s": pair(self.p50_makespan),
            "p99_makespan_s": pair(self.p99_makespan),
            "p99_latency_s": pair(self.p99_latency),
            "share_ratio": {t: pair(e) for t, e in self.share_ratio.items()},
            "wall_s": self.wall_s,
        }


def summarise(runs: Sequence[RunResult], weights: Mapping[str, float]) -> Summary:
    """The summary of one (policy, load)'s runs (one per seed)."""
    first = runs[0]
    total_weight = sum(weights.values()) or 1.0
    shares: dict[str, list[float]] = {t: [] for t in weights}
    for run in runs:
        for tenant, weight in weights.items():
            fair = weight / total_weight
            shares[tenant].append(run.service_share.get(tenant, 0.0) / fair)
    return Summary(
        first.policy,
        first.load,
        len(runs),
        estimate([statistics.fmean(r.makespans) for r in runs]),
        estimate([percentile(r.makespans, 0.5) for r in runs]),
        estimate([percentile(r.makespans, 0.99) for r in runs]),
        estimate([percentile(r.latencies, 0.99) for r in runs]),
        {t: estimate(v) for t, v in shares.items()},
        sum(r.wall_s for r in runs),
    )


def tenant_p99(run: RunResult, tenant: str) -> float:
    """p99 makespan of one tenant's jobs in a run."""
    mine = [m for m, t in zip(run.makespans, run.tenants, strict=True) if t == tenant]
    return percentile(mine, 0.99)


def render(summaries: Sequence[Summary]) -> str:
    """A plain-text comparison table (seconds of virtual time; ± is the 95% interval)."""
    header = ("policy", "load", "mean makespan", "p50 makespan", "p99 makespan", "p99 latency",
              "tenant share / fair", "wall s")  # fmt: skip
    rows = [header]
    for s in summaries:
        share = " ".join(f"{t}={e.mean:.2f}" for t, e in s.share_ratio.items())
        rows.append(
            (s.policy, f"{s.load:g}", str(s.mean_makespan), str(s.p50_makespan),
             str(s.p99_makespan), str(s.p99_latency), share, f"{s.wall_s:.1f}")
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
