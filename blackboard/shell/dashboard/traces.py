"""Traced runs for the runs page, through the observability package's public functions.

Only merged files are opened: :func:`observability.segments.open_runs` first merges a run's
segments (Arrow streams the workers append to) into ``<run>/run.duckdb`` in a fresh file
swapped in atomically, then attaches that file read-only. The dashboard never opens a DuckDB
file a worker is writing (docs/DESIGN.md §6); a run still being written shows as partial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blackboard.errors import TraceError


def _rows(table: Any) -> list[dict[str, Any]]:
    from observability.report import json_rows

    return json_rows(table)


def list_runs(traces: Path | None) -> list[dict[str, Any]]:
    """Every run under ``traces`` (newest last) with scenario, store, span counts and its
    model calls: ``llm_calls``, ``llm_failed``, ``llm_input_tokens``, ``llm_output_tokens``,
    ``llm_cost_usd`` (None when no call was priced, none made included) and ``llm_unpriced``
    (:func:`observability.llm_costs.run_llm_totals`).

    Raises:
        TraceError: no traces directory configured, or it does not exist.
    """
    from observability import analyses, llm_costs, segments

    directory = _dir(traces)
    names = segments.list_runs(directory)
    if not names:
        return []
    con = segments.open_runs(directory, names)
    try:
        totals = {row.pop("run_id"): row for row in _rows(llm_costs.run_llm_totals(con))}
        return [row | totals.get(row["run_id"], {}) for row in _rows(analyses.runs(con))]
    finally:
        con.close()


def run_report(traces: Path | None, run_id: str, bucket_ms: float | None = None) -> dict[str, Any]:
    """One run: summary, makespan per correlation id (and its p50/p95/p99), latency per
    agent, RED over time (``bucket_ms`` wide buckets; default about 40 over the run), and
    its model calls per agent and per model (``llm_by_agent``, ``llm_by_model``: empty when
    it made none).

    Raises:
        TraceError: the run is missing or cannot be read.
    """
    from observability import analyses, llm_costs, segments

    con = segments.open_runs(_dir(traces), [run_id])
    try:
        summary = _rows(analyses.summary(con, run_id))
        makespans = _rows(analyses.makespan(con, run_id))
        if bucket_ms is None:
            wall = float((summary[0] if summary else {}).get("wall_ms") or 0.0)
            bucket_ms = _nice_bucket(wall / 40)
        return {
            "run_id": run_id,
            "summary": summary[0] if summary else {},
            "makespan": _makespan_stats(makespans),
            "latency": _rows(analyses.latency(con, run_id)),
            "bucket_ms": bucket_ms,
            "red": _rows(analyses.red(con, run_id, bucket_ms)),
            "llm_by_agent": _rows(llm_costs.llm_costs(con, [run_id], "agent")),
            "llm_by_model": _rows(llm_costs.llm_costs(con, [run_id], "model")),
        }
    finally:
        con.close()


def compare(traces: Path | None, run_a: str, run_b: str) -> list[dict[str, Any]]:
    """Run B against run A: means with confidence intervals.

    Raises:
        TraceError: a run is missing or cannot be read.
    """
    from observability import segments
    from observability.compare import compare as compare_runs

    con = segments.open_runs(_dir(traces), [run_a, run_b])
    try:
        return _rows(compare_runs(con, run_a, run_b))
    finally:
        con.close()


def _dir(traces: Path | None) -> Path:
    if traces is None:
        raise TraceError("no traces directory: start the dashboard with --traces DIR")
    return traces


def _nice_bucket(ms: float) -> float:
    """The smallest of 1, 2 or 5 times 10^k ms at least ``ms`` (1 ms at least)."""
    step = 1.0
    while step < ms:
        for factor in (2.0, 2.5, 2.0):
            step *= factor
            if step >= ms:
                break
    return step


def _makespan_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Overall makespan (first start to last end) and percentiles per correlation id."""
    spans = sorted(float(v) for r in rows if (v := _ms(r)) is not None)
    if not spans:
        return {"correlations": 0}

    def pct(p: float) -> float:
        return spans[min(len(spans) - 1, max(0, round(p * (len(spans) - 1))))]

    return {
        "correlations": len(spans),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": spans[-1],
    }


def _ms(row: dict[str, Any]) -> float | None:
    for key in ("makespan_ms", "duration_ms"):
        if isinstance(row.get(key), int | float):
            return float(row[key])
    return None
