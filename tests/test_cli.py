"""The command line, run as users run it: a separate process, stdout for data only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "blackboard.shell.cli.main"]


def run(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BLACKBOARD_URL": ""}
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )


def test_demo_json_prints_exactly_one_document_with_the_figures() -> None:
    out = run("demo", "--ideas", "20", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)  # the whole of stdout is one document
    assert doc["artifacts"] == {"research.Idea": 20, "research.Review": 60, "research.Verdict": 20}
    lat = doc["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= doc["makespan_ms"]
    assert "worker started" in out.stderr  # logs go to stderr


def test_demo_summary_is_human_readable() -> None:
    out = run("demo", "--ideas", "5")
    assert out.returncode == 0, out.stderr
    assert "research.Verdict" in out.stdout and "p99" in out.stdout and "makespan" in out.stdout


def test_types_lists_names_versions_and_schemas() -> None:
    out = run("types", "--json")
    assert out.returncode == 0, out.stderr
    types = {t["name"]: t for t in json.loads(out.stdout)["types"]}
    assert set(types) == {"research.Idea", "research.Review", "research.Verdict"}
    assert types["research.Review"]["schema"]["properties"]["score"]["maximum"] == 10


def test_bad_input_gets_one_line_and_exit_code_2(tmp_path: Path) -> None:
    cases = [
        ("lag", "--store", "nosuch://x"),
        ("publish", "research.Idea", '{"title": 3}', "--store", f"memory://{tmp_path}/s"),
        ("publish", "research.Nope", "{}"),
        ("worker", "no_such_module:app"),
        ("tail", "research.Idea", "--store", f"memory://{tmp_path}/empty"),
    ]
    for args in cases:
        out = run(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("blackboard: error: "), (args, out.stderr)
    assert "title: Input should be a valid string" in run(*cases[1]).stderr


def test_publish_tail_worker_lag_round_trip_with_sigterm(tmp_path: Path) -> None:
    store = f"memory://{tmp_path}/board"
    out = run(
        "publish",
        "research.Idea",
        "--store",
        store,
        "--json",
        stdin='{"title": "a"}\n{"title": "b"}\n',
    )
    assert out.returncode == 0, out.stderr
    published = json.loads(out.stdout)["published"]
    assert [p["type"] for p in published] == ["research.Idea", "research.Idea"]

    tail = run("tail", "research.Idea", "--store", store)
    rows = [json.loads(line) for line in tail.stdout.splitlines()]
    assert sorted(r["payload"]["title"] for r in rows) == ["a", "b"]
    assert {r["id"] for r in rows} == {p["id"] for p in published}

    (tmp_path / "slowapp.py").write_text(
        textwrap.dedent("""
        import asyncio
        from agents import App, Context
        from agents.demo import Idea, Review, registry
        app = App("slow", registry=registry)

        @app.agent(consumes=Idea, publishes=Review)
        async def novelty(idea: Idea, ctx: Context) -> Review:
            await asyncio.sleep(1.0)
            return Review(idea_id=ctx.envelope.id, aspect="novelty", score=5)
    """)
    )
    worker = subprocess.Popen(
        [*CLI, "worker", "slowapp:app", "--store", store],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        log = ""
        while "partitions assigned" not in log:
            assert time.monotonic() < deadline, log
            line = worker.stderr.readline()  # type: ignore[union-attr]
            assert line, f"worker exited: {worker.poll()}"
            log += line
        time.sleep(0.3)  # both handlers are now sleeping in flight
        worker.send_signal(signal.SIGTERM)
        stdout, stderr = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, stderr
    assert stdout == ""
    reviews = run("tail", "research.Review", "--store", store)
    assert len(reviews.stdout.splitlines()) == 2  # in-flight work was finished and committed
    lag = json.loads(run("lag", "--store", store, "--json").stdout)["lag"]
    assert {r["group"] for r in lag} == {"bb.novelty"}
    assert sum(r["lag"] for r in lag) == 0
    assert sum(r["end_offset"] for r in lag) == 2


@pytest.mark.parametrize("command", ["demo", "types", "lag"])
def test_help_works(command: str) -> None:
    assert run(command, "--help").returncode == 0


def test_unreachable_kafka_is_one_line() -> None:
    import socket

    with socket.socket() as s:  # a free loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = run("lag", "--store", f"kafka://127.0.0.1:{port}")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.startswith("blackboard: error:")]
    assert lines == [lines[0]] and f"cannot reach Kafka at 127.0.0.1:{port}" in lines[0]


def test_demo_repeats_for_a_seed() -> None:
    first, second = (
        json.loads(run("demo", "--ideas", "12", "--seed", "11", "--json").stdout) for _ in range(2)
    )
    assert first["accepted"] == second["accepted"]
    assert first["artifacts"] == second["artifacts"]
