"""``blackboard traces cost`` on runs whose chat spans are known exactly: written through the
tracer (start_tracing, process spans with real scheduling decisions, observability.tracing.
model_call) to real segments, merged into a real DuckDB file. Also what the other analyses
and the OTLP conversion make of chat spans (the dashboard's: tests/test_dashboard.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from blackboard.artifacts import Envelope
from blackboard.errors import BlackboardError, LLMError, TraceError
from blackboard.records import Record
from observability import analyses, llm_costs, segments, tracing
from observability.runs import RunInfo
from observability.schema import format_traceparent
from observability.spans import AgentInfo
from scheduler.base import Decision
from scheduler.batching import Release
from scheduler.retrybudget import Deferral

RUN = "costs"
OTHER = "costs-other"


def _env(corr: str, tenant: str, n: int, traceparent: str | None = None) -> Envelope:
    return Envelope(
        id=f"art-{n}",
        type="cost.Idea",
        schema_version=1,
        correlation_id=corr,
        tenant=tenant,
        traceparent=traceparent,
    )


def _call(
    agent: str,
    env: Envelope,
    model: str,
    tokens: tuple[int, int],
    cost: float | None,
    *,
    decision: object = None,
    reasks: int = 0,
    requests: int = 1,
    error: BaseException | None = None,
) -> None:
    """One model call of ``agent`` on ``env``, as the LLM client records it: inside a process
    span started with ``decision`` (none: outside any process span)."""
    provider, name = model.split(":", 1)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": name,
        "gen_ai.usage.input_tokens": tokens[0],
        "gen_ai.usage.output_tokens": tokens[1],
        "bb.llm.model": model,
        "bb.llm.cost": cost,
        "bb.llm.prices": None if cost is None else "genai-prices test",
        "bb.llm.reasks": reasks,
        "bb.llm.requests": requests,
        "bb.llm.cache_read_tokens": 0,
        "bb.llm.cache_write_tokens": 0,
    }
    if error is None:
        attributes["gen_ai.response.model"] = model
        attributes["gen_ai.response.finish_reasons"] = ["stop"]
    else:
        attributes["bb.llm.error"] = getattr(error, "kind", "llm_output")
    span = None
    if decision is not None:
        about = AgentInfo("memory", f"bb.{agent}", agent, 1, lambda t: f"bb.{t}")
        record = Record("bb.cost.Idea", 0, 0, None, b"{}", (), time.time(), env)
        span = tracing.process(about, record, env, 1, None, decision)
    tracing.model_call(agent, env, f"chat {name}", time.time_ns(), attributes, error)
    if span is not None:
        span.end(error, stage="process" if error is not None else None)


SRPT = Decision("srpt", "admitted", "shortest-remaining", 0)
SRPT_DEFERRED = Decision("srpt", "deferred", "shortest-remaining", 1, overtaken=2)
BATCH = Release("batch", "cost.Idea", 3, "full", 1.0)
DRR = Decision("drr+fifo", "admitted", "arrival", 2)
GPT, LOCAL, CLAUDE = "openai:gpt-4o-mini", "local:smollm2", "anthropic:claude-x"


def write_cost_runs(root: Path) -> None:
    """Under ``root``: run ``costs`` (labelled policy ``baseline``), five calls:

    1. writer, acme, c1, gpt: 100/20 tokens, $0.25, in an srpt attempt
    2. writer, acme, c2, gpt: 50/10, $0.5, one re-ask (2 requests), in a deferred srpt attempt
    3. writer, beta, c2, local: 30/5, $0, in a batch's release (the writer's policy: srpt)
    4. critic, beta, c3, claude: 40/0, unpriced, outside any process span (the run's label)
    5. reviewer, beta, c3, gpt: 10/0, $0.125, failed (rate limited, 3 requests), in a drr+fifo
       attempt that failed with it

    and run ``costs-other`` (labelled ``plas``): one critic call, 7/3 tokens, $1, after a
    retry-budget deferral."""
    trace = tracing.start_tracing(root, RunInfo.create(scenario="c", policy="baseline", run_id=RUN))
    try:
        sent = format_traceparent("ab" * 16, "cd" * 8)
        _call("writer", _env("c1", "acme", 1), GPT, (100, 20), 0.25, decision=SRPT)
        _call("writer", _env("c2", "acme", 2), GPT, (50, 10), 0.5, decision=SRPT_DEFERRED,
              reasks=1, requests=2)  # fmt: skip
        _call("writer", _env("c2", "beta", 3), LOCAL, (30, 5), 0.0, decision=BATCH)
        _call("critic", _env("c3", "beta", 4, sent), CLAUDE, (40, 0), None)
        _call("reviewer", _env("c3", "beta", 5), GPT, (10, 0), 0.125, decision=DRR, requests=3,
              error=LLMError("429 from the provider", kind="rate_limited"))  # fmt: skip
    finally:
        trace.stop()
    time.sleep(0.01)  # the second run's segment is newer (runs sort by segment time)
    trace = tracing.start_tracing(root, RunInfo.create(scenario="c", policy="plas", run_id=OTHER))
    try:
        deferral = Deferral("cost.Idea", "acme", 0.2, 0.5)
        _call("critic", _env("c9", "acme", 9), GPT, (7, 3), 1.0, decision=deferral)
    finally:
        trace.stop()


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llm") / "traces"
    write_cost_runs(root)
    return root


def _figures(calls: int, failed: int, tokens: tuple[int, int], cost: float | None,
             unpriced: int, reasks: int, requests: int) -> dict[str, Any]:  # fmt: skip
    return {
        "calls": calls,
        "failed": failed,
        "input_tokens": tokens[0],
        "output_tokens": tokens[1],
        "cost_usd": cost,
        "unpriced": unpriced,
        "reasks": reasks,
        "requests": requests,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
    }


WRITER = _figures(3, 0, (180, 35), 0.75, 0, 1, 4)
EXPECTED: dict[str, tuple[str, dict[str | None, dict[str, Any]]]] = {
    "agent": ("agent", {
        "writer": WRITER,
        "critic": _figures(1, 0, (40, 0), None, 1, 0, 1),
        "reviewer": _figures(1, 1, (10, 0), 0.125, 0, 0, 3),
    }),
    "model": ("model", {
        GPT: _figures(3, 1, (160, 30), 0.875, 0, 1, 6),
        LOCAL: _figures(1, 0, (30, 5), 0.0, 0, 0, 1),
        CLAUDE: _figures(1, 0, (40, 0), None, 1, 0, 1),
    }),
    "tenant": ("tenant", {
        "acme": _figures(2, 0, (150, 30), 0.75, 0, 1, 3),
        "beta": _figures(3, 1, (80, 5), 0.125, 1, 0, 5),
    }),
    "correlation": ("correlation_id", {
        "c1": _figures(1, 0, (100, 20), 0.25, 0, 0, 1),
        "c2": _figures(2, 0, (80, 15), 0.5, 0, 1, 3),
        "c3": _figures(2, 1, (50, 0), 0.125, 1, 0, 4),
    }),
    "policy": ("policy", {
        "srpt": WRITER,  # decisions of its attempts; the batch release: the writer's other ones
        "baseline": _figures(1, 0, (40, 0), None, 1, 0, 1),  # no process span: the run's label
        "drr+fifo": _figures(1, 1, (10, 0), 0.125, 0, 0, 3),
    }),
}  # fmt: skip


def _by_key(rows: list[dict[str, Any]], column: str) -> dict[str | None, dict[str, Any]]:
    return {row.pop(column): row for row in rows}


@pytest.mark.parametrize("by", list(EXPECTED))
def test_cost_per_key_is_exactly_the_calls_sums(traces: Path, by: str) -> None:
    column, expected = EXPECTED[by]
    con = segments.open_runs(traces, [RUN])
    try:
        table = llm_costs.llm_costs(con, [RUN], by)
    finally:
        con.close()
    assert table.column_names == [column, *WRITER]
    assert _by_key(table.to_pylist(), column) == expected


def test_the_command_gives_the_same_records_and_one_json_document_per_key(
    traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from blackboard.shell.cli.main import build_parser
    from blackboard.shell.cli.trace_commands import cmd_traces

    for by, (column, expected) in EXPECTED.items():
        argv = ["traces", "cost", "--traces", str(traces), "--run", RUN, "--by", by, "--json"]
        assert cmd_traces(build_parser().parse_args(argv)) == 0
        doc = json.loads(capsys.readouterr().out)  # the whole of stdout is one document
        assert (doc["query"], doc["by"], doc["runs"]) == ("cost", by, [RUN])
        assert doc["columns"] == [column, *WRITER]
        assert _by_key(doc["rows"], column) == expected, by
    # Default: the newest run, by agent; the most expensive first.
    assert cmd_traces(build_parser().parse_args(["traces", "cost", "--traces", str(traces)])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:6] == ["agent", "calls", "failed", "input_tokens", "output_tokens",
                                    "cost_usd"]  # fmt: skip
    assert lines[1].split()[:6] == ["critic", "1", "0", "7", "3", "1.000000"]
    assert len(lines) == 2


def test_cost_sums_over_several_runs_and_a_run_s_label_is_its_fallback(traces: Path) -> None:
    con = segments.open_runs(traces, [RUN, OTHER])
    try:
        by_policy = _by_key(llm_costs.llm_costs(con, [RUN, OTHER], "policy").to_pylist(), "policy")
        by_agent = _by_key(llm_costs.llm_costs(con, [RUN, OTHER], "agent").to_pylist(), "agent")
        totals = {r["run_id"]: r for r in llm_costs.run_llm_totals(con).to_pylist()}
    finally:
        con.close()
    # A retry-budget deferral names no ready-queue policy, nor does the critic elsewhere.
    assert by_policy["plas"] == _figures(1, 0, (7, 3), 1.0, 0, 0, 1)
    assert set(by_policy) == {"srpt", "baseline", "drr+fifo", "plas"}
    assert by_agent["critic"] == _figures(2, 0, (47, 3), 1.0, 1, 0, 2)
    assert totals[RUN] == {
        "run_id": RUN, "llm_calls": 5, "llm_failed": 1, "llm_input_tokens": 230,
        "llm_output_tokens": 35, "llm_cost_usd": 0.875, "llm_unpriced": 1,
    }  # fmt: skip
    assert totals[OTHER]["llm_calls"] == 1 and totals[OTHER]["llm_cost_usd"] == 1.0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BLACKBOARD_TRACES"}
    return subprocess.run(
        [sys.executable, "-m", "blackboard.shell.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_the_command_as_users_run_it_and_its_one_line_errors(traces: Path, tmp_path: Path) -> None:
    out = _cli("traces", "cost", "--traces", str(traces), "--run", RUN, "--run", OTHER,
               "--by", "model", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)  # exactly one document
    assert doc["runs"] == [RUN, OTHER]
    rows = _by_key(doc["rows"], "model")
    assert rows[GPT]["calls"] == 4 and rows[GPT]["cost_usd"] == 1.875
    assert [r["model"] for r in json.loads(out.stdout)["rows"]] == [GPT, LOCAL, CLAUDE]
    for args in (
        ("traces", "cost", "--traces", str(traces), "--by", "nope"),
        ("traces", "cost", "--traces", str(tmp_path / "missing")),
        ("traces", "cost", "--traces", str(traces), "--run", "absent"),
    ):
        out = _cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("blackboard: error: "), (args, out.stderr)
    from blackboard.shell.cli.main import build_parser
    from blackboard.shell.cli.trace_commands import cmd_traces

    args = build_parser().parse_args(["traces", "summary", "--traces", str(traces), "--run", RUN,
                                      "--run", OTHER])  # fmt: skip
    with pytest.raises(BlackboardError, match="summary takes 1 run"):  # only cost takes more
        cmd_traces(args)
    with pytest.raises(TraceError, match="unknown grouping"):
        llm_costs.llm_costs(None, [RUN], "nope")  # type: ignore[arg-type]


def test_groups_in_the_parser_match_the_analysis() -> None:
    from blackboard.shell.cli.trace_commands import COST_GROUPS

    assert tuple(llm_costs.GROUPS) == COST_GROUPS


def write_plain_run(root: Path) -> None:
    """Under ``root``: run ``plain``, one process span and no model call."""
    with tracing.start_tracing(root, RunInfo.create(scenario="plain", run_id="plain")):
        about = AgentInfo("memory", "bb.a", "a", 1, lambda t: f"bb.{t}")
        env = _env("c1", "acme", 1)
        record = Record("bb.cost.Idea", 0, 0, None, b"{}", (), time.time(), env)
        tracing.process(about, record, env, 1, None).end()


def test_a_run_without_model_calls_has_no_cost_rows_and_zero_totals(tmp_path: Path) -> None:
    root = tmp_path / "traces"
    write_plain_run(root)
    con = segments.open_runs(root, ["plain"])
    try:
        table = llm_costs.llm_costs(con, ["plain"], "policy")
        assert table.num_rows == 0 and table.column_names[0] == "policy"
        [totals] = llm_costs.run_llm_totals(con).to_pylist()
    finally:
        con.close()
    assert totals == {
        "run_id": "plain", "llm_calls": 0, "llm_failed": 0, "llm_input_tokens": 0,
        "llm_output_tokens": 0, "llm_cost_usd": None, "llm_unpriced": 0,
    }  # fmt: skip


# -- what the other analyses make of chat spans ---------------------------------------------------


def test_chat_spans_stay_in_their_trace_and_count_as_no_attempt_or_commit(traces: Path) -> None:
    con = segments.open_runs(traces, [RUN])
    try:
        summary = analyses.summary(con, RUN).to_pylist()[0]
        makespans = {r["correlation_id"]: r for r in analyses.makespan(con, RUN).to_pylist()}
        latency = analyses.latency(con, RUN).to_pylist()
        failures = analyses.failures(con, RUN).to_pylist()
        parents = con.sql(
            "SELECT c.artifact_id, p.operation FROM spans c LEFT JOIN spans p "
            "ON p.span_id = c.parent_span_id AND p.trace_id = c.trace_id "
            "WHERE c.operation = 'chat' ORDER BY c.artifact_id"
        ).fetchall()
    finally:
        con.close()
    # Four process spans (one failed), five chat spans: the attempts are counted, not the calls.
    assert (summary["processed"], summary["dead_letters"], summary["commits"]) == (3, 1, 0)
    assert summary["complete"] is True and summary["spans_written"] == 9
    assert sum(r["n"] for r in latency) == 4
    assert [(r["agent"], r["dead_letters"]) for r in failures] == [("reviewer", 1)]
    # c3: the failed call and its failed attempt are one error; the call outside a process
    # span is a child of the send span of its input, in the same trace.
    assert makespans["c3"]["errors"] == 1 and makespans["c3"]["processes"] == 1
    assert makespans["c2"]["errors"] == 0 and makespans["c2"]["spans"] == 4
    assert parents == [("art-1", "process"), ("art-2", "process"), ("art-3", "process"),
                       ("art-4", None), ("art-5", "process")]  # fmt: skip


def test_a_chat_span_over_otlp_is_no_messaging_operation_and_has_no_null_attribute() -> None:
    from observability import otel
    from observability.spans import Tracer

    rows: list[Any] = []
    tracer = Tracer(rows.append)
    attributes = {"gen_ai.operation.name": "chat", "bb.llm.cost": None, "bb.llm.reasks": 0}
    tracer.model_call("a", _env("c1", "acme", 1), "chat m", time.time_ns(), attributes, None)
    span = otel.row_to_readable(rows[0], otel.resource(RunInfo(run_id="r"), "w"))
    attrs = dict(span.attributes or {})
    assert "messaging.operation.type" not in attrs and "bb.llm.cost" not in attrs
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.agent.name"] == "a"
    assert attrs["bb.tenant"] == "acme" and attrs["bb.llm.reasks"] == 0
