"""Tracing where it runs for real: a ``blackboard worker --traces`` process whose JSON log lines
carry the ids of the span they were written in, and spans across a real Kafka broker (the
``traceparent`` header links a consumer's process span to its producer's send span)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agents.agent import App
from agents.context import Context
from agents.settings import RunnerSettings
from agents.worker import Worker
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.blackboard import Blackboard, BlackboardSettings
from observability import segments, tracing
from observability.runs import RunInfo
from observability.schema import parse_traceparent

CLI = [sys.executable, "-m", "blackboard.shell.cli.main"]


def test_a_traced_worker_logs_json_lines_with_the_span_s_ids(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLACKBOARD_", "OTEL_"))}
    store = f"memory://{tmp_path}/board"
    published = subprocess.run(
        [*CLI, "publish", "research.Idea", "--store", store, "--json"],
        input='{"title": "a"}\n{"title": "b"}\n',
        capture_output=True, text=True, env=env, check=True, timeout=60,
    )  # fmt: skip
    ids = {p["id"] for p in json.loads(published.stdout)["published"]}
    (tmp_path / "loggingapp.py").write_text(
        textwrap.dedent("""
        import structlog
        from agents import App, Context
        from agents.demo import Idea, Review, registry
        app = App("logging", registry=registry)

        @app.agent(consumes=Idea, publishes=Review)
        async def novelty(idea: Idea, ctx: Context) -> Review:
            ctx.log.info("reviewing", title=idea.title)
            structlog.get_logger("mine").info("plain logger")
            return Review(idea_id=ctx.envelope.id, aspect="novelty", score=5)
    """)
    )
    traces = tmp_path / "traces"
    worker = subprocess.Popen(
        [*CLI, "worker", "loggingapp:app", "--store", store, "--traces", str(traces),
         "--run-id", "w1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 60
        while sum(1 for e in lines if e["event"] == "plain logger") < 2:
            assert time.monotonic() < deadline, lines
            line = worker.stderr.readline()  # type: ignore[union-attr]
            assert line, f"worker exited: {worker.poll()}"
            lines.append(json.loads(line))  # JSON lines: stderr is not a terminal
        worker.send_signal(signal.SIGTERM)
        stdout, stderr = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, stderr
    assert stdout == ""  # stdout carries data only
    in_span = [e for e in lines if e["event"] in ("reviewing", "plain logger")]
    assert len(in_span) == 4
    for event in in_span:
        assert len(event["trace_id"]) == 32 and len(event["span_id"]) == 16
        assert event["agent"] == "novelty" and event["artifact_id"] in ids
    started = next(e for e in lines if e["event"] == "worker started")
    assert "trace_id" not in started  # no span is current outside handlers

    con = segments.open_runs(traces, ["w1"])
    process = con.sql(
        "SELECT trace_id, span_id, artifact_id FROM spans WHERE operation = 'process'"
    ).fetchall()
    summary = con.sql(
        "SELECT scenario, spans_ended = spans_written, "
        "(SELECT count(*) FROM spans WHERE operation = 'process') FROM runs"
    ).fetchall()
    con.close()
    assert summary == [("logging", True, 2)]
    logged = {(e["trace_id"], e["span_id"], e["artifact_id"]) for e in in_span}
    assert logged == set(process)


kafka_registry = TypeRegistry()


@artifact("kt.Ping", registry=kafka_registry)
class Ping(BaseModel):
    n: int


@artifact("kt.Pong", registry=kafka_registry)
class Pong(BaseModel):
    n: int


@pytest.mark.kafka
async def test_spans_cross_a_kafka_broker_through_the_traceparent_header(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    url = f"kafka://{kafka_bootstrap}"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    board = Blackboard(
        url, registry=kafka_registry,
        settings=BlackboardSettings(url=url, prefix=prefix, partitions=2),
    )  # fmt: skip
    app = App("kt", registry=kafka_registry)

    async def pong(ping: Ping, ctx: Context) -> Pong:
        return Pong(n=ping.n)

    app.add(pong, consumes=Ping, publishes=Pong)
    traces = tmp_path / "traces"
    trace = tracing.start_tracing(traces, RunInfo.create(scenario="kafka", store=url))
    worker = Worker(app, board, RunnerSettings(commit_interval_ms=10, idle_poll_s=0.1))
    board.ensure_topics(app.types())
    running = asyncio.create_task(worker.run())
    try:
        await worker.started()
        board.publish_many([Ping(n=i) for i in range(10)])
        deadline = time.monotonic() + 60
        while len(pongs := list(board.read(Pong))) < 10:
            assert time.monotonic() < deadline, len(pongs)
            await asyncio.sleep(0.1)
    finally:
        worker.stop()
        await running
        board.close()
        trace.stop()
    con = segments.open_runs(traces, [trace.run.run_id])
    rows = con.sql("SELECT * FROM spans").to_arrow_table().to_pylist()
    links = con.sql("SELECT span_id, linked_span_id FROM links").fetchall()
    con.close()
    sends = {(r["artifact_id"], r["artifact_type"]): r for r in rows if r["operation"] == "send"}
    process = [r for r in rows if r["operation"] == "process"]
    assert len(process) == 10 and {r["system"] for r in rows} == {"kafka"}
    for span in process:  # the input's traceparent came back through Kafka's headers
        sent = sends[(span["artifact_id"], "kt.Ping")]
        assert span["parent_span_id"] == sent["span_id"]
        assert (span["span_id"], sent["span_id"]) in links
    for out in pongs:  # the output's header names its send span, a child of the process span
        sent = sends[(out.id, "kt.Pong")]
        assert parse_traceparent(out.envelope.traceparent) == (sent["trace_id"], sent["span_id"])
        assert sent["parent_span_id"] in {p["span_id"] for p in process}
