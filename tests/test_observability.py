"""Spans of real pipelines on the embedded store, written to real segments and merged into real
DuckDB files: attributes, links, one trace per correlation id, retries and dead letters, the
OpenTelemetry API, OTLP export, lost spans, segments of several processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from pydantic import BaseModel

from agents.agent import App
from agents.context import Context
from agents.retry import RetryPolicy
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.errors import TraceError
from blackboard.records import OutgoingRecord
from blackboard.shell.testing import TestBoard
from observability import analyses, segments, tracing
from observability.exporter import SegmentWriter, SpanBatcher
from observability.runs import RunInfo
from observability.schema import parse_traceparent
from observability.settings import TraceSettings

registry = TypeRegistry()


@artifact("obs.Question", registry=registry)
class Question(BaseModel):
    n: int


@artifact("obs.Answer", registry=registry)
class Answer(BaseModel):
    n: int


@pytest.fixture
def traces(tmp_path: Path) -> Path:
    return tmp_path / "traces"


def _app(fail: dict[int, int] | None = None, always_fail: frozenset[int] = frozenset()) -> App:
    """``answerer``: Question(n) -> Answer(n); fails the first ``fail[n]`` attempts of n, and
    every attempt of the numbers in ``always_fail``."""
    app = App("obs", registry=registry)
    failures = dict(fail or {})

    async def answerer(q: Question, ctx: Context) -> Answer:
        if q.n in always_fail:
            raise ValueError(f"no answer to {q.n}")
        if failures.get(q.n, 0) > 0:
            failures[q.n] -= 1
            raise ConnectionError(f"flaky {q.n}")
        return Answer(n=q.n)

    retry = RetryPolicy(max_attempts=3, backoff_ms=1, max_backoff_ms=2, jitter="none")
    app.add(answerer, consumes=Question, publishes=Answer, retry=retry)
    return app


async def _run(app: App, inputs: int, **publish: Any) -> TestBoard:
    async with TestBoard(app) as tb:
        tb.board.publish_many([Question(n=i) for i in range(inputs)], **publish)
        await tb.run_until_idle()
    return tb


def _traced(traces: Path, scenario: str = "test", **run: Any) -> tracing.Tracing:
    return tracing.start_tracing(traces, RunInfo.create(scenario=scenario, **run))


def _rows(con: Any, sql: str, *params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = con.sql(sql, params=list(params)).to_arrow_table().to_pylist()
    return rows


async def test_a_pipeline_s_spans_carry_the_attributes_and_each_correlation_is_one_trace(
    traces: Path,
) -> None:
    trace = _traced(traces, seed=3, store="memory://")
    try:
        tb = await _run(_app(), 6)
    finally:
        counts = trace.stop()
    assert counts.ended == counts.written > 0 and counts.dropped == counts.failed == 0
    run_id = trace.run.run_id
    con = segments.open_runs(traces, [run_id])

    process = _rows(con, "SELECT * FROM spans WHERE operation = 'process' ORDER BY artifact_id")
    assert len(process) == 6
    for span in process:
        assert span["name"] == "process bb.obs.Question" and span["kind"] == "CONSUMER"
        assert span["system"] == "memory" and span["destination"] == "bb.obs.Question"
        assert span["consumer_group"] == "bb.answerer" and span["agent"] == "answerer"
        assert span["artifact_type"] == "obs.Question" and span["tenant"] == "default"
        assert span["attempt"] == 1
        assert span["policy_decision"].startswith("admitted fifo why=arrival")
        assert span["status"] == "OK" and span["outcome"] == "ok"
        assert 0 <= span["partition_id"] < 4 and span["record_offset"] >= 0
        assert span["queue_wait_ms"] >= 0 and span["duration_ms"] >= 0
        assert span["correlation_id"] == span["artifact_id"]  # an input is its own correlation

    sends = _rows(con, "SELECT * FROM spans WHERE operation = 'send'")
    external = {s["artifact_id"]: s for s in sends if s["artifact_type"] == "obs.Question"}
    outputs = {s["artifact_id"]: s for s in sends if s["artifact_type"] == "obs.Answer"}
    assert len(external) == len(outputs) == 6
    assert all(s["kind"] == "PRODUCER" and s["parent_span_id"] is None for s in external.values())

    # A process span is a child of its input's send span and links to it.
    links = {(r["span_id"]): r for r in _rows(con, "SELECT * FROM links")}
    by_span = {s["span_id"]: s for s in process}
    for span in process:
        sent = external[span["artifact_id"]]
        assert span["parent_span_id"] == sent["span_id"] and span["trace_id"] == sent["trace_id"]
        link = links[span["span_id"]]
        assert (link["linked_trace_id"], link["linked_span_id"]) == (
            sent["trace_id"],
            sent["span_id"],
        )
    # An output's send span is a child of the process span, and its traceparent is in the
    # output's envelope as stored.
    for answer in tb.artifacts(Answer):
        sent = outputs[answer.id]
        assert by_span[sent["parent_span_id"]]["operation"] == "process"
        assert parse_traceparent(answer.envelope.traceparent) == (sent["trace_id"], sent["span_id"])

    # One trace per correlation id, every parent inside it.
    spans = _rows(con, "SELECT * FROM spans WHERE correlation_id IS NOT NULL")
    by_corr: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_corr.setdefault(s["correlation_id"], []).append(s)
    assert len(by_corr) == 6
    for group in by_corr.values():
        assert len({s["trace_id"] for s in group}) == 1
        ids = {s["span_id"] for s in group}
        assert [s for s in group if s["parent_span_id"] not in ids] == [
            s for s in group if s["parent_span_id"] is None
        ]
        assert len(group) == 3  # send, process, send

    settle = _rows(con, "SELECT * FROM spans WHERE operation = 'settle'")
    assert settle and all(s["kind"] == "CLIENT" and s["agent"] == "answerer" for s in settle)
    committed = [orjson.loads(s["attributes"]) for s in settle]
    assert sum(c["bb.commit.records"] for c in committed) == 6
    assert sum(c["bb.commit.outputs"] for c in committed) == 6

    run = _rows(con, "SELECT * FROM runs")[0]
    assert (run["scenario"], run["policy"], run["seed"], run["store"]) == (
        "test",
        "fifo",
        3,
        "memory://",
    )
    assert (
        run["spans_ended"]
        == run["spans_written"]
        == run["spans_loaded"]
        == len(_rows(con, "SELECT * FROM spans"))
    )
    assert orjson.loads(run["versions"])["duckdb"] and run["git_sha"]
    con.close()


async def test_retries_dead_letters_and_undecodable_records_are_spans_with_errors(
    traces: Path,
) -> None:
    trace = _traced(traces)
    try:
        app = _app(fail={1: 1, 2: 2}, always_fail=frozenset({3}))
        async with TestBoard(app) as tb:
            tb.board.publish_many([Question(n=i) for i in range(5)])
            topic = tb.board.topic(Question)
            tb.board.store.publish([OutgoingRecord(topic, b"k", b"not json", ())])
            await tb.run_until_idle()
    finally:
        trace.stop()
    run_id = trace.run.run_id
    con = segments.open_runs(traces, [run_id])
    rows = analyses.failures(con, run_id).to_pylist()
    by = {(r["error_stage"], r["error_type"]): r for r in rows}
    flaky = by[("process", "ConnectionError")]
    assert (flaky["retries"], flaky["dead_letters"], flaky["recovered"]) == (3, 0, 2)
    assert flaky["max_attempt"] == 2  # n=2 failed attempts 1 and 2, then succeeded on 3
    hopeless = by[("process", "ValueError")]
    assert (hopeless["retries"], hopeless["dead_letters"], hopeless["max_attempt"]) == (2, 1, 3)
    bad = by[("deserialize", "blackboard.errors.DecodeError")]
    assert bad["dead_letters"] == 1 and bad["retries"] == 0
    summary = analyses.summary(con, run_id).to_pylist()[0]
    assert (summary["retries"], summary["dead_letters"], summary["processed"]) == (5, 2, 4)
    failed = _rows(con, "SELECT * FROM spans WHERE status = 'ERROR' AND operation = 'process'")
    assert all(s["status_message"] for s in failed)
    con.close()


async def test_spans_made_with_the_opentelemetry_api_nest_under_the_process_span(
    traces: Path,
) -> None:
    from opentelemetry import trace as otel_trace

    app = App("nest", registry=registry)

    async def answerer(q: Question, ctx: Context) -> Answer:
        with otel_trace.get_tracer("test").start_as_current_span("llm call") as span:
            span.set_attribute("llm.tokens", 42)
        return Answer(n=q.n)

    app.add(answerer, consumes=Question, publishes=Answer)
    trace = _traced(traces)
    try:
        await _run(app, 2)
    finally:
        trace.stop()
    con = segments.open_runs(traces, [trace.run.run_id])
    llm = _rows(con, "SELECT * FROM spans WHERE name = 'llm call'")
    process = {s["span_id"]: s for s in _rows(con, "SELECT * FROM spans WHERE operation='process'")}
    assert len(llm) == 2
    for span in llm:
        parent = process[span["parent_span_id"]]
        assert span["trace_id"] == parent["trace_id"]
        assert orjson.loads(span["attributes"]) == {"llm.tokens": 42}
    con.close()


def test_tracing_off_costs_nothing_and_leaves_envelopes_alone() -> None:
    assert not tracing.enabled()
    assert tracing.sends("c").traceparent() is None
    assert tracing.sends() is tracing.NO_SENDS

    async def run() -> TestBoard:
        return await _run(_app(), 2)

    tb = asyncio.run(run())
    assert all(a.envelope.traceparent is None for a in tb.artifacts(Answer))


def test_a_full_queue_drops_spans_and_the_summary_says_so(traces: Path) -> None:
    run = RunInfo.create(scenario="overflow")
    writer = SegmentWriter(segments.segments_dir(traces, run.run_id), run, "w0")
    batcher = SpanBatcher(writer, TraceSettings(max_queue=10, flush_interval_s=60))
    template = ("0" * 31 + "1", "0" * 15 + "1", None, "x", "INTERNAL", 0, 1000, "OK") + (None,) * 20
    for _ in range(25):
        batcher.add(template)
    counts = batcher.close()
    assert (counts.ended, counts.written, counts.dropped, counts.lost) == (25, 10, 15, 15)
    con = segments.open_runs(traces, [run.run_id])
    summary = analyses.summary(con, run.run_id).to_pylist()[0]
    assert (summary["spans_ended"], summary["spans_written"], summary["spans_lost"]) == (25, 10, 15)
    assert summary["complete"] is False
    assert "15 of 25 spans ended were not written (15 dropped" in summary["note"]
    con.close()


def test_segments_of_several_processes_merge_into_one_run(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    cli = [sys.executable, "-m", "blackboard.shell.cli.main", "demo", "--ideas", "5", "--json"]
    env = {**os.environ, "BLACKBOARD_TRACES": str(traces), "BLACKBOARD_RUN_ID": "shared-run"}
    procs = [
        subprocess.Popen([*cli, "--seed", str(seed)], env=env, stdout=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]
    docs = [orjson.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert {d["traces"]["run_id"] for d in docs} == {"shared-run"}
    assert segments.list_runs(traces) == ["shared-run"]
    merged = segments.merge_run(traces, "shared-run")
    assert (merged.segments, merged.open_segments) == (2, 0)
    con = segments.open_runs(traces, ["shared-run"])
    written = sum(d["traces"]["spans_written"] for d in docs)
    run = _rows(con, "SELECT * FROM runs")[0]
    assert run["segments"] == 2 and run["spans_written"] == run["spans_loaded"] == written
    workers = _rows(con, "SELECT worker, count(*) AS n FROM spans GROUP BY worker")
    assert len(workers) == 2 and sum(w["n"] for w in workers) == written
    assert analyses.summary(con, "shared-run").to_pylist()[0]["complete"] is True
    con.close()
    assert segments.merge_run(traces, "shared-run").path == merged.path  # up to date: reused


def test_a_live_segment_merges_as_far_as_written_and_a_dead_one_keeps_its_counts(
    traces: Path,
) -> None:
    trace = _traced(traces)
    run_id = trace.run.run_id
    try:
        asyncio.run(_run(_app(), 3))
        written = trace.flush().written
        merged = segments.merge_run(traces, run_id)
        assert merged.open_segments == 1
        con = segments.open_runs(traces, [run_id])
        summary = analyses.summary(con, run_id).to_pylist()[0]
        con.close()
        assert summary["spans_loaded"] == written and summary["complete"] is False
        assert "still being written" in summary["note"]
    finally:
        trace.stop()
    # A process that died mid-batch: its sidecar says open with its last counts, its pid is
    # gone, its stream has no end marker and the last batch is cut short.
    meta_path = trace.path.with_suffix(".json")
    meta = orjson.loads(meta_path.read_bytes())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    meta.update(closed=False, pid=int(dead.stdout), spans_ended=meta["spans_ended"] + 7)
    meta_path.write_bytes(orjson.dumps(meta))
    data = trace.path.read_bytes()
    trace.path.write_bytes(data[: -8 - 40])  # no end-of-stream marker, last batch cut
    con = segments.open_runs(traces, [run_id])
    summary = analyses.summary(con, run_id).to_pylist()[0]
    segment = _rows(con, "SELECT * FROM segments")[0]
    con.close()
    assert segment["state"] == "died" and segment["truncated"] is True
    assert summary["spans_lost"] == 7 and summary["segments_died"] == 1
    assert summary["spans_loaded"] < summary["spans_written"]
    assert "never closed" in summary["note"] and "7 of" in summary["note"]
    assert "found in the segments" in summary["note"]


def test_tracing_twice_in_one_process_is_refused(traces: Path) -> None:
    trace = _traced(traces)
    try:
        with pytest.raises(TraceError, match="on already"):
            _traced(traces)
    finally:
        trace.stop()


class _Collector(BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:  # the http.server API names it
        length = int(self.headers.get("Content-Length", "0"))
        _Collector.bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def collector() -> Iterator[str]:
    """An OTLP/HTTP endpoint on loopback that keeps what it is sent."""
    _Collector.bodies = []
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_otlp_export_when_the_standard_variables_are_set(
    traces: Path, collector: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
    trace = _traced(traces)
    try:
        asyncio.run(_run(_app(), 3))
    finally:
        counts = trace.stop()
    names: list[str] = []
    attributes: dict[str, Any] = {}
    for body in _Collector.bodies:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    names.append(span.name)
                    if span.name.startswith("process"):
                        attributes = {a.key: a.value for a in span.attributes}
    assert len(names) == counts.written
    assert "process bb.obs.Question" in names and "send bb.obs.Answer" in names
    assert attributes["messaging.destination.partition.id"].string_value.isdigit()
    assert attributes["bb.policy.decision"].string_value.startswith("admitted fifo")


def test_the_runtime_imports_no_tracing_library_until_tracing_starts() -> None:
    code = (
        "import sys, agents, blackboard, blackboard.shell.cli.main\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('duckdb', 'pyarrow')"
        " or m.startswith('opentelemetry.sdk')]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
