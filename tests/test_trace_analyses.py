"""Every canned analysis on small runs whose spans are known exactly (written as rows to real
segments, merged into a real DuckDB file), and the ``blackboard traces`` command."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from blackboard.errors import TraceError
from observability import analyses, compare, segments
from observability.exporter import SegmentWriter, SpanCounts
from observability.runs import RunInfo

MS = 1_000_000  # ns


def _span(
    n: int,
    *,
    op: str = "process",
    agent: str | None = "a",
    start_ms: float,
    dur_ms: float,
    corr: str | None = "c1",
    wait_ms: float | None = 1.0,
    status: str = "OK",
    outcome: str | None = "ok",
    attempt: int | None = 1,
    stage: str | None = None,
    error: str | None = None,
    art: str | None = None,
    art_type: str | None = "t.In",
) -> tuple[Any, ...]:
    start = int(1_700_000_000_000 * MS + start_ms * MS)
    return (
        f"{1:032x}", f"{n:016x}", None, f"{op} topic", "CONSUMER", start,
        start + int(dur_ms * MS), status, "boom" if status == "ERROR" else None, op, "memory",
        "bb.t.In", 0, n, f"bb.{agent}", corr, art or f"art-{n}", art_type, attempt, "admitted",
        wait_ms, "default", agent, outcome, stage, error, None, None,
    )  # fmt: skip


def _write(traces: Path, run_id: str, rows: list[tuple[Any, ...]], policy: str = "fifo") -> None:
    run = RunInfo.create(scenario="known", policy=policy, seed=1, run_id=run_id)
    writer = SegmentWriter(segments.segments_dir(traces, run_id), run, "w0")
    writer.write(rows)
    writer.close_segment(SpanCounts(len(rows), len(rows), 0, 0))


@pytest.fixture
def known(tmp_path: Path) -> Path:
    """Run ``r1``: correlation c1 (send at 0, a: 0-10 ms, b: 20-50 ms), c2 (a: 1000-1030 ms,
    two attempts of b, the first failed and retried), an artifact dead-lettered by b."""
    traces = tmp_path / "traces"
    rows = [
        _span(1, op="send", agent="external", start_ms=0, dur_ms=0, wait_ms=None, attempt=None),
        _span(2, start_ms=0, dur_ms=10, wait_ms=2),
        _span(3, agent="b", start_ms=20, dur_ms=30, wait_ms=4),
        _span(4, start_ms=1000, dur_ms=30, corr="c2", wait_ms=6),
        _span(5, agent="b", start_ms=1040, dur_ms=5, corr="c2", status="ERROR",
              outcome="retried", stage="process", error="ConnectionError", art="x"),
        _span(6, agent="b", start_ms=1050, dur_ms=15, corr="c2", attempt=2, art="x"),
        _span(7, agent="b", start_ms=1100, dur_ms=5, corr="c3", status="ERROR",
              outcome="dead_letter", stage="timeout", error="TimeoutError", art="y"),
        _span(8, op="settle", start_ms=1200, dur_ms=2, corr=None, wait_ms=None, attempt=None,
              outcome="ok", art_type=None),
    ]  # fmt: skip
    _write(traces, "r1", rows)
    return traces


def _one(con: Any, fn: Any, *args: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = fn(con, *args).to_pylist()
    return rows


def test_summary_makespan_red_latency_queue_failures_spans(known: Path) -> None:
    con = segments.open_runs(known, ["r1"])
    s = _one(con, analyses.summary, "r1")[0]
    assert (s["processed"], s["retries"], s["dead_letters"], s["commits"]) == (4, 1, 1, 1)
    assert s["wall_ms"] == 1202 and s["correlation_ids"] == 3 and s["complete"] is True
    assert s["note"] is None and s["spans_lost"] == 0 and s["workers"] == 1

    makespans = {r["correlation_id"]: r for r in _one(con, analyses.makespan, "r1")}
    assert makespans["c1"]["makespan_ms"] == 50 and makespans["c1"]["processes"] == 2
    assert makespans["c1"]["spans"] == 3 and makespans["c1"]["traces"] == 1
    assert (makespans["c2"]["start_ms"], makespans["c2"]["makespan_ms"]) == (1000, 65)
    assert makespans["c2"]["errors"] == 1 and makespans["c3"]["errors"] == 1

    red = {(r["agent"], r["bucket_ms"]): r for r in _one(con, analyses.red, "r1", 1000.0)}
    assert set(red) == {("a", 0), ("a", 1000), ("b", 0), ("b", 1000)}
    b1 = red[("b", 1000)]
    assert (b1["requests"], b1["errors"], b1["rate_per_s"]) == (3, 2, 3.0)
    assert math.isclose(b1["error_ratio"], 2 / 3)
    assert red[("a", 0)]["p50_ms"] == 10

    latency = {r["agent"]: r for r in _one(con, analyses.latency, "r1")}
    assert latency["a"]["n"] == 2 and latency["a"]["mean_ms"] == 20
    assert latency["a"]["p50_ms"] == 20 and latency["a"]["policy"] == "fifo"
    assert latency["b"]["n"] == 4 and latency["b"]["max_ms"] == 30

    queue = {r["agent"]: r for r in _one(con, analyses.queue_vs_service, "r1")}
    assert queue["a"]["queue_mean_ms"] == 4 and queue["a"]["service_mean_ms"] == 20
    assert math.isclose(queue["a"]["queue_share"], 8 / 48)

    failures = {r["error_type"]: r for r in _one(con, analyses.failures, "r1")}
    assert (failures["ConnectionError"]["retries"], failures["ConnectionError"]["recovered"]) == (
        1,
        1,
    )
    assert failures["TimeoutError"]["dead_letters"] == 1
    assert failures["TimeoutError"]["error_stage"] == "timeout"

    spans = _one(con, analyses.process_spans, "r1")
    assert len(spans) == 6 and spans[0]["start_ms"] == 0 and spans[-1]["start_ms"] == 1100
    with pytest.raises(TraceError, match="not in the traces"):
        analyses.summary(con, "nope")
    with pytest.raises(TraceError, match="bucket must be positive"):
        analyses.red(con, "r1", 0)
    con.close()


def test_compare_gives_welch_intervals(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    a = [10.0, 12.0, 14.0, 16.0, 18.0]
    b = [20.0, 23.0, 26.0, 29.0, 32.0]
    for run_id, values, policy in (("base", a, "fifo"), ("new", b, "srpt")):
        rows = [
            _span(i + 1, start_ms=100.0 * i, dur_ms=v, corr=f"c{i}") for i, v in enumerate(values)
        ]
        _write(traces, run_id, rows, policy)
    con = segments.open_runs(traces, ["base", "new"])
    rows = {(r["scope"], r["metric"]): r for r in _one(con, analyses.compare, "base", "new")}
    con.close()
    row = rows[("agent a", "process_ms")]
    assert (row["policy_a"], row["policy_b"], row["n_a"], row["n_b"]) == ("fifo", "srpt", 5, 5)
    assert (row["mean_a"], row["mean_b"], row["diff"]) == (14, 26, 12)
    # Welch: var 10 and 22.5, se = sqrt(2 + 4.5), df = 6.5² / (2²/4 + 4.5²/4) = 7.0
    se = math.sqrt(6.5)
    half = 2.3646 * se  # t(0.975, 7)
    assert math.isclose(row["ci_low"], 12 - half, rel_tol=1e-3)
    assert math.isclose(row["ci_high"], 12 + half, rel_tol=1e-3)
    assert row["significant"] is True and math.isclose(row["change"], 12 / 14)
    assert rows[("end to end", "makespan_ms")]["n_a"] == 5  # one makespan per correlation id
    assert ("agent a", "queue_wait_ms") in rows


def test_t_quantile_matches_tables() -> None:
    for df, expected in ((3, 3.1824), (7, 2.3646), (10, 2.2281), (30, 2.0423), (1000, 1.9623)):
        assert math.isclose(compare.t_quantile(0.975, df), expected, rel_tol=2e-3), df


CLI = [sys.executable, "-m", "blackboard.shell.cli.main"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BLACKBOARD_TRACES"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env)


def test_the_traces_command_prints_one_json_document_per_query(
    known: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from blackboard.shell.cli.main import build_parser
    from blackboard.shell.cli.trace_commands import cmd_traces

    _write(known, "r2", [_span(1, start_ms=0, dur_ms=5)])
    for query in analyses.QUERIES:  # in process: the parser and the command as main runs them
        args = build_parser().parse_args(["traces", query, "--traces", str(known), "--json"])
        assert cmd_traces(args) == 0
        doc = json.loads(capsys.readouterr().out)  # the whole of stdout is one document
        assert doc["query"] == query and doc["columns"], query
        expected = ["r1", "r2"] if query in ("runs", "compare") else ["r2"]
        assert doc["runs"] == expected, query
    # As users run it: a separate process, one document on stdout.
    out = _cli("traces", "summary", "--traces", str(known), "--run", "r1", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rows"][0]["dead_letters"] == 1
    args = build_parser().parse_args(["traces", "latency", "--traces", str(known), "--run", "r1"])
    assert cmd_traces(args) == 0
    assert "p95_ms" in capsys.readouterr().out.splitlines()[0]


def test_the_traces_command_s_errors_are_one_line(known: Path, tmp_path: Path) -> None:
    from blackboard.errors import BlackboardError
    from blackboard.shell.cli.main import build_parser
    from blackboard.shell.cli.trace_commands import cmd_traces

    cases = [
        ("traces", "nope", "--traces", str(known)),
        ("traces", "summary", "--traces", str(tmp_path / "missing")),
        ("traces", "compare", "--traces", str(known)),  # only one run there
    ]
    for args in cases:  # as users see them
        out = _cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("blackboard: error: "), (args, out.stderr)
    for argv, message in (  # in process: main turns these into the same one line
        (["--run", "absent"], "no run 'absent'"),
        (["--run", "r1", "--bucket-ms", "0"], "bucket must be positive"),
        (["--run", "r1", "--limit", "-1"], "--limit"),
    ):
        args = build_parser().parse_args(["traces", "red", "--traces", str(known), *argv])
        with pytest.raises(BlackboardError, match=message):
            cmd_traces(args)
    args = build_parser().parse_args(["traces", "compare", "--traces", str(known), "--run", "r1"])
    with pytest.raises(BlackboardError, match="compare takes 2 run"):
        cmd_traces(args)


def test_query_names_in_the_parser_match_the_analyses() -> None:
    from blackboard.shell.cli.trace_commands import QUERY_NAMES

    assert set(QUERY_NAMES) == set(analyses.QUERIES)
