"""Batch controls per type on the embedded store with a manual clock: operator overrides
(``--batch``, ``BLACKBOARD_BATCH``, ``Worker(batch=...)``) win over code, bad ones stop
start-up with one line, and a released batch's process span says why it was released."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.agent import App
from agents.clock import ManualClock
from agents.collected import Batch
from agents.context import Context
from agents.worker import Worker
from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.errors import AgentError, ConfigError
from observability import segments, tracing
from observability.runs import RunInfo
from scheduler.batching import BatchControl, BatchSettings, Release, parse_override
from tests.contract.helpers import eventually
from tests.contract.test_processing import FAST, _start
from tests.contract.types import Doc, Result, Task, registry


@pytest.fixture
def board() -> Iterator[Blackboard]:
    with Blackboard(
        "memory://", registry=registry, settings=BlackboardSettings(partitions=2)
    ) as opened:
        yield opened


def _app() -> App:
    """``summer``: Tasks by 3 within 1 s, Docs by 2 within 5 s, one Result per batch."""
    app = App("ctl", registry=registry)

    @app.batch(
        consumes={Task: BatchControl(max_records=3, max_wait_ms=1000), Doc: BatchControl(2, 5000)},
        publishes=Result,
    )
    async def summer(batch: Batch[Task | Doc], ctx: Context) -> Result:
        by = f"{batch.type}:{','.join(str(x.n) for x in batch)}"
        return Result(n=len(batch), by=by)

    return app


def _by(board: Blackboard) -> list[str]:
    return sorted(a.payload.by for a in board.read(Result))  # type: ignore[attr-defined]


def _held(board: Blackboard) -> bool:
    """Every record read is committed (the rest is held in the batches' state)."""
    return sum(row.lag for row in board.lag([board.topics.group("summer")])) == 0


async def test_an_override_from_settings_wins_over_code(board: Blackboard) -> None:
    clock = ManualClock()
    worker = Worker(
        _app(), board, FAST, clock=clock, batch=BatchSettings.parse("Task=2:100ms,summer/Doc=:1s")
    )
    [spec] = [r.spec for r in worker.runners]
    assert spec.collector is not None
    assert spec.collector.controls == {
        "test.Task": BatchControl(2, 100),
        "test.Doc": BatchControl(2, 1000),  # the size stays the code's
    }
    running = await _start(worker)
    board.publish_many([Task(n=i) for i in range(5)], partition_key="k")
    board.publish(Doc(n=7), partition_key="k")
    await eventually(lambda: _by(board) == ["test.Task:0,1", "test.Task:2,3"], what="size 2")
    await eventually(lambda: _held(board), what="Task 4 and Doc 7 held")
    clock.advance(0.15)  # Task's overridden window (code: 1 s)
    await eventually(lambda: "test.Task:4" in _by(board), what="Task's 100 ms window")
    assert "test.Doc:7" not in _by(board)
    clock.advance(0.9)  # Doc's overridden window (code: 5 s)
    await eventually(lambda: "test.Doc:7" in _by(board), what="Doc's 1 s window")
    worker.stop()
    await running


async def test_the_environment_variable_overrides_and_an_explicit_value_replaces_it(
    board: Blackboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BLACKBOARD_BATCH", "test.Task=7:3s")
    [runner] = Worker(_app(), board, FAST).runners
    assert runner.spec.collector is not None
    assert runner.spec.collector.controls["test.Task"] == BatchControl(7, 3000)
    assert runner.spec.collector.wanted == {"test.Task": 7, "test.Doc": 2}
    [runner] = Worker(_app(), board, FAST, batch=BatchSettings.from_env(["Doc=4"])).runners
    assert runner.spec.collector is not None
    assert runner.spec.collector.controls == {
        "test.Task": BatchControl(3, 1000),
        "test.Doc": BatchControl(4, 5000),
    }
    monkeypatch.setenv("BLACKBOARD_BATCH", "Task=3:soon")
    with pytest.raises(ConfigError, match=r"^BLACKBOARD_BATCH: batch override 'Task=3:soon': "):
        Worker(_app(), board, FAST)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Task", "is not [AGENT/]TYPE=SIZE:WINDOW"),
        ("Task=", "sets neither a size nor a window"),
        ("Task=many", "size 'many' is not a whole number >= 1"),
        ("Task=0:1s", "size '0' is not a whole number >= 1"),
        ("Task=-3", "size '-3' is not a whole number >= 1"),
        ("Task=5:1h", "window '1h' is not a duration > 0"),
        ("Task=5:0ms", "window '0ms' is not a duration > 0"),
        ("a/b/Task=5", "is not [AGENT/]TYPE=SIZE:WINDOW"),
    ],
)
def test_a_malformed_override_is_one_line_naming_it(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        BatchSettings.parse(f"Doc=2,{text}")
    message = str(caught.value)
    assert "\n" not in message and f"{text!r}" in message and expected in message


_KNOWN = "(batched types: test.Doc, test.Task)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Nope=5", f"no batch agent consumes type 'Nope' {_KNOWN}"),
        ("test.Vote=5", f"no batch agent consumes type 'test.Vote' {_KNOWN}"),
        ("other/Task=5", "'other' is not a batch agent of the app (batch agents: summer)"),
    ],
)
def test_an_unknown_type_or_agent_stops_start_up(
    board: Blackboard, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Worker(_app(), board, FAST, batch=BatchSettings.parse(text))
    assert str(caught.value) == f"batch override {text!r}: {expected}"


def test_overrides_parse_sizes_windows_and_units() -> None:
    assert parse_override("shop.Order=50:200ms").apply(BatchControl()) == BatchControl(50, 200)
    assert parse_override("a/Order=:1.5s").apply(BatchControl(9, 1)) == BatchControl(9, 1500)
    assert parse_override("Order=:2m").max_wait_ms == 120_000
    assert parse_override("Order=8:250").apply(BatchControl()) == BatchControl(8, 250)
    with pytest.raises(ConfigError, match="name the same type"):
        BatchSettings.parse(["Order=1", "Order=2"])
    with pytest.raises(AgentError):
        BatchControl(0, 10)


def test_the_single_type_form_still_works_and_names_its_type() -> None:
    app = App("one", registry=registry)

    @app.batch(consumes=Task, max_records=4, max_wait_ms=50)
    async def single(batch: Batch[Task], ctx: Context) -> None:
        return None

    collector = app.agents["single"].collector
    assert collector is not None and collector.controls == {"test.Task": BatchControl(4, 50)}
    with pytest.raises(AgentError, match="BatchControl"):
        app.batch(consumes={Task: 3})(single)  # type: ignore[dict-item]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blackboard.shell.cli.main", "worker", "agents.demo:app", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BLACKBOARD_URL": "memory://", **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--batch", "Idea=lots"], {}, "batch override 'Idea=lots': size 'lots' is not"),
        ([], {"BLACKBOARD_BATCH": "Idea=5:x"}, "BLACKBOARD_BATCH: batch override 'Idea=5:x'"),
        (["--batch", "research.Idea=5"], {}, "no batch agent consumes type 'research.Idea'"),
    ],
)
def test_the_cli_prints_one_line_without_a_traceback(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    out = _cli(*args, env=env)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blackboard: error: "), out.stderr
    assert expected in lines[0]


async def test_a_released_batch_s_span_says_why_and_how_long_its_oldest_record_waited(
    board: Blackboard, tmp_path: Path
) -> None:
    clock = ManualClock()
    trace = tracing.start_tracing(tmp_path, RunInfo.create(scenario="batch"))
    try:
        worker = Worker(_app(), board, FAST, clock=clock)
        running = await _start(worker)
        board.publish_many([Task(n=0), Task(n=1)], partition_key="k")
        await eventually(lambda: _held(board), what="two Tasks held")
        clock.advance(0.4)
        board.publish(Task(n=2), partition_key="k")  # fills the batch: released as full
        await eventually(lambda: _by(board) == ["test.Task:0,1,2"], what="the full batch")
        board.publish(Doc(n=5), partition_key="k")
        await eventually(lambda: _held(board), what="a Doc held")
        clock.advance(5.25)
        await eventually(lambda: len(_by(board)) == 2, what="the Doc's window")
        await eventually(lambda: _held(board), what="committed")
        worker.stop()
        await running
    finally:
        trace.stop()
    con = segments.open_runs(tmp_path, [trace.run.run_id])
    rows = con.sql(
        "SELECT policy_decision, queue_wait_ms, artifact_type, record_offset, outcome "
        "FROM spans WHERE operation = 'process' AND policy_decision LIKE 'admitted batch%' "
        "ORDER BY policy_decision"
    ).fetchall()
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
        ("admitted batch type=test.Doc size=1 why=window", "test.Doc", 0, "ok"),  # the oldest
        ("admitted batch type=test.Task size=3 why=full", "test.Task", 2, "ok"),  # the last
    ]
    assert [r[1] for r in rows] == [pytest.approx(5250.0), pytest.approx(400.0)]
    held = con.sql(
        "SELECT count(*) FROM spans WHERE operation = 'process' "
        "AND policy_decision NOT LIKE 'admitted batch%'"
    ).fetchall()
    assert held == [(3,)]  # Tasks 0 and 1 and the Doc, held: their own spans, the policy's text
    assert str(Release("batch", "shop.Order", 50, "full", 1.0)) == (
        "admitted batch type=shop.Order size=50 why=full"
    )
