"""Two traced runs side by side (e.g. two scheduling policies): per scope and metric, the means
of A and B, their difference and a Welch confidence interval (:func:`compare`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import pyarrow as pa

from blackboard.errors import TraceError
from observability.duck import Connection, check_run


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile (Cornish-Fisher expansion around the normal; within 0.1% of the
    exact value from 3 degrees of freedom, the normal's beyond a few hundred)."""
    z = NormalDist().inv_cdf(p)
    if math.isinf(df) or df > 1e7:
        return z
    z2 = z * z
    g1 = (z2 + 1) * z / 4
    g2 = ((5 * z2 + 16) * z2 + 3) * z / 96
    g3 = (((3 * z2 + 19) * z2 + 17) * z2 - 15) * z / 384
    g4 = ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) * z / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@dataclass(frozen=True, slots=True)
class _Sample:
    n: int
    mean: float | None
    var: float | None
    p50: float | None
    p95: float | None


def _welch(a: _Sample, b: _Sample, confidence: float) -> tuple[float | None, float | None]:
    """Confidence interval of mean(b) - mean(a) (Welch: unequal variances)."""
    if a.n < 2 or b.n < 2 or a.var is None or b.var is None:
        return None, None
    assert a.mean is not None
    assert b.mean is not None
    sa, sb = a.var / a.n, b.var / b.n
    diff = b.mean - a.mean
    se = math.sqrt(sa + sb)
    if se == 0:
        return diff, diff
    df = (sa + sb) ** 2 / (sa**2 / (a.n - 1) + sb**2 / (b.n - 1))
    half = t_quantile(0.5 + confidence / 2, df) * se
    return diff - half, diff + half


_SAMPLES = """
WITH p AS (SELECT run_id, 'agent ' || agent AS scope, 'process_ms' AS metric,
        duration_ms AS x FROM spans WHERE run_id IN ($1, $2) AND operation = 'process'),
m AS (SELECT run_id, 'end to end' AS scope, 'makespan_ms' AS metric,
        (max(end_ns) - min(start_ns)) / 1e6 AS x
    FROM spans WHERE run_id IN ($1, $2) AND correlation_id IS NOT NULL
    GROUP BY run_id, correlation_id),
w AS (SELECT run_id, 'agent ' || agent AS scope, 'queue_wait_ms' AS metric,
        queue_wait_ms AS x FROM spans
    WHERE run_id IN ($1, $2) AND operation = 'process' AND queue_wait_ms IS NOT NULL),
x AS (SELECT * FROM p UNION ALL SELECT * FROM m UNION ALL SELECT * FROM w)
SELECT scope, metric, run_id, count(x), avg(x), var_samp(x), quantile_cont(x, 0.5),
    quantile_cont(x, 0.95)
FROM x GROUP BY ALL ORDER BY scope, metric
"""


def compare(con: Connection, run_a: str, run_b: str, confidence: float = 0.95) -> pa.Table:
    """Run B against run A (e.g. a policy against the baseline) per scope — end to end
    (makespan per correlation id) and each agent's process time and queue wait: sizes, means,
    the difference of means B - A with its Welch confidence interval, the relative change,
    p50 and p95 of each, and whether the interval excludes zero. Records of one run queue
    behind each other, so they are not independent samples and the intervals are narrower than
    the truth: repeat runs before calling one policy better.

    Raises:
        TraceError: a run is missing, or ``confidence`` is not within (0, 1).
    """
    if not 0 < confidence < 1:
        raise TraceError(f"confidence must be between 0 and 1, got {confidence}")
    check_run(con, run_a)
    check_run(con, run_b)
    policies = dict(
        con.execute(
            "SELECT run_id, policy FROM runs WHERE run_id IN ($1, $2)", [run_a, run_b]
        ).fetchall()
    )
    found: dict[tuple[str, str], dict[str, _Sample]] = {}
    for scope, metric, run_id, n, mean, var, p50, p95 in con.execute(
        _SAMPLES, [run_a, run_b]
    ).fetchall():
        found.setdefault((scope, metric), {})[run_id] = _Sample(n, mean, var, p50, p95)
    empty = _Sample(0, None, None, None, None)
    rows: list[dict[str, Any]] = []
    for (scope, metric), by_run in sorted(
        found.items(), key=lambda kv: (kv[0][0] != "end to end", kv[0])
    ):
        a, b = by_run.get(run_a, empty), by_run.get(run_b, empty)
        low, high = _welch(a, b, confidence)
        diff = b.mean - a.mean if a.mean is not None and b.mean is not None else None
        rows.append(
            {
                "scope": scope,
                "metric": metric,
                "run_a": run_a,
                "run_b": run_b,
                "policy_a": policies.get(run_a),
                "policy_b": policies.get(run_b),
                "n_a": a.n,
                "n_b": b.n,
                "mean_a": a.mean,
                "mean_b": b.mean,
                "diff": diff,
                "ci_low": low,
                "ci_high": high,
                "confidence": confidence,
                "change": diff / a.mean if diff is not None and a.mean else None,
                "p50_a": a.p50,
                "p50_b": b.p50,
                "p95_a": a.p95,
                "p95_b": b.p95,
                "significant": (low > 0 or high < 0)
                if low is not None and high is not None
                else None,
            }
        )
    return pa.Table.from_pylist(rows, schema=_COMPARE_SCHEMA)


_COMPARE_SCHEMA = pa.schema(
    [
        ("scope", pa.string()),
        ("metric", pa.string()),
        ("run_a", pa.string()),
        ("run_b", pa.string()),
        ("policy_a", pa.string()),
        ("policy_b", pa.string()),
        ("n_a", pa.int64()),
        ("n_b", pa.int64()),
        ("mean_a", pa.float64()),
        ("mean_b", pa.float64()),
        ("diff", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("confidence", pa.float64()),
        ("change", pa.float64()),
        ("p50_a", pa.float64()),
        ("p50_b", pa.float64()),
        ("p95_a", pa.float64()),
        ("p95_b", pa.float64()),
        ("significant", pa.bool_()),
    ]
)


# -- the command line's queries -------------------------------------------------------------------
