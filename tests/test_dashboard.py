"""Dashboard rules without a browser: Burrow-style health, desired workers, start-up refusal,
the JSON API's throttled publishers, and the runs' model calls, tokens and cost."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from agents.agent import App
from agents.context import Context
from blackboard.blackboard import Blackboard
from blackboard.errors import ConfigError
from blackboard.shell.dashboard.auth import change_refusal, may_read
from blackboard.shell.dashboard.sampler import Sampler
from blackboard.shell.dashboard.server import DashboardServer
from blackboard.shell.dashboard.settings import DashboardSettings, is_loopback
from blackboard.shell.testing import TestBoard
from scheduler.backpressure import (
    Sample,
    desired_workers,
    moved,
    partition_status,
    rate,
    worst,
)
from tests.test_backpressure import SETTINGS as BP_SETTINGS
from tests.test_backpressure import Job
from tests.test_backpressure import Result as BpResult
from tests.test_backpressure import registry as bp_registry
from tests.test_cli import run
from tests.test_llm_costs import EXPECTED, OTHER, RUN, write_cost_runs, write_plain_run


def _window(*points: tuple[int, int | None]) -> list[Sample]:
    return [Sample(float(i), end, committed) for i, (end, committed) in enumerate(points)]


@pytest.mark.parametrize(
    ("points", "group_active", "status"),
    [
        ([(10, 5)], False, "OK"),  # one sample says nothing yet
        ([(10, 5), (20, 20), (30, 25)], True, "OK"),  # caught up once in the window
        ([(10, 5), (20, 18), (30, 26)], True, "OK"),  # moving, lag not always growing
        ([(10, 5), (20, 8), (30, 9)], True, "WARN"),  # moving, lag grows every time
        ([(10, 5), (20, 5), (30, 5)], True, "STALL"),  # the group commits, not here
        ([(10, 5), (10, 5), (10, 5)], True, "STALL"),
        ([(10, 5), (20, 5), (30, 5)], False, "STOP"),  # the group commits nothing at all
        ([(10, None), (12, None)], False, "STOP"),  # never committed
        ([(10, 8), (20, 4), (30, 9)], True, "REWIND"),  # committed went backwards
    ],
)
def test_partition_status_follows_burrows_rules(
    points: list[tuple[int, int | None]], group_active: bool, status: str
) -> None:
    window = _window(*points)
    assert partition_status(window, group_active or moved(window)) == status


def test_group_status_is_the_worst_partition_and_rates_come_from_deltas() -> None:
    assert worst(["OK", "WARN", "OK"]) == "WARN"
    assert worst(["WARN", "STOP", "REWIND"]) == "STOP"
    assert worst([]) == "OK"
    assert rate([(0.0, 100), (2.0, 300)]) == 100.0
    assert rate([(0.0, 100)]) == 0.0


@pytest.mark.parametrize(
    ("lag", "threshold", "partitions", "wanted"),
    [(0, 100, 8, 0), (1, 100, 8, 1), (250, 100, 8, 3), (10_000, 100, 8, 8), (5, 100, 0, 0)],
)
def test_desired_workers_is_lag_over_threshold_capped_at_partitions(
    lag: int, threshold: int, partitions: int, wanted: int
) -> None:
    assert desired_workers(lag, threshold, partitions) == wanted


def test_binding_off_loopback_needs_a_key() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    DashboardSettings(host="127.0.0.1").check()
    DashboardSettings(host="0.0.0.0", api_key="secret").check()
    with pytest.raises(ConfigError, match="without an API key"):
        DashboardSettings(host="0.0.0.0").check()


def test_cli_refuses_a_public_address_without_a_key_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BLACKBOARD_API_KEY", raising=False)
    out = run("dashboard", "--host", "0.0.0.0", "--store", "memory://", "--port", "0")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("blackboard: error: refusing to bind 0.0.0.0 without an API key")
    assert out.stderr.count("\n") == 1


def _request(client: str, headers: dict[str, str] | None = None, query: str = "") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/overview",
        "headers": raw,
        "query_string": query.encode(),
        "client": (client, 50000),
    }
    return Request(scope)


def test_reads_are_open_on_loopback_only_and_changes_always_need_the_key() -> None:
    local = DashboardSettings(api_key="k")
    public = DashboardSettings(host="0.0.0.0", api_key="k")
    keyless = DashboardSettings()
    anonymous = _request("10.0.0.9")
    assert may_read(local, anonymous) and not may_read(public, anonymous)
    assert may_read(public, _request("10.0.0.9", {"X-API-Key": "k"}))
    assert may_read(public, _request("10.0.0.9", {"Authorization": "Bearer k"}))
    assert may_read(public, _request("10.0.0.9", query="key=k"))  # EventSource
    assert not may_read(public, _request("10.0.0.9", {"X-API-Key": "wrong"}))
    assert change_refusal(local, anonymous) is not None
    assert change_refusal(local, _request("127.0.0.1", {"X-API-Key": "k"})) is None
    assert "disabled" in (change_refusal(keyless, _request("127.0.0.1", {"X-API-Key": "k"})) or "")


async def test_the_api_shows_throttled_publishers_on_the_overview_and_the_consuming_group(
    tmp_path: Path,
) -> None:
    """``fast`` (Job -> Result) is paused by ``slow``, stuck on Results: the overview lists
    it (state, rate, lag, expected wait, the slowest group) and counts it on ``bb.slow``; the
    page of ``bb.slow``, which consumes Results, lists it; ``bb.fast``'s does not (it consumes
    Jobs). Once ``slow`` drains, nobody is listed."""
    app = App("bp", registry=bp_registry)

    async def fast(job: Job, ctx: Context) -> BpResult:
        return BpResult(n=job.n)

    release = asyncio.Event()

    async def slow(result: BpResult, ctx: Context) -> None:
        if result.n >= 20:
            await release.wait()

    app.add(fast, consumes=Job, publishes=BpResult, concurrency=8)
    app.add(slow, consumes=BpResult, concurrency=1)
    settings = BP_SETTINGS.model_copy(
        update={"target_wait_s": 0.2, "sample_interval_s": 0.05, "max_rate": 500.0,
                "min_rate": 5.0, "increase": 200.0, "burst_s": 0.02}
    )  # fmt: skip
    dash = DashboardSettings(port=0, audit_log=tmp_path / "audit.jsonl", sample_interval_s=0.1)
    async with TestBoard(app, partitions=2, backpressure=settings) as tb:
        tb.board.publish_many([Job(n=i) for i in range(400)])
        sampler = Sampler(tb.board, dash)
        deadline = time.monotonic() + 20
        while True:  # the agent reports its paused throttle in its status
            sampler.sample()
            throttled = sampler.overview()["backpressure"]["throttled"]
            if throttled and throttled[0]["bb.throttle.state"] == "paused":
                break
            assert time.monotonic() < deadline, throttled
            await asyncio.sleep(0.05)
        [entry] = throttled
        assert entry["agent"] == "fast" and entry["topic"] == "bb.bp.Result"
        assert entry["bb.throttle.rate"] == 0.0 and entry["bb.throttle.lag"] > 0
        assert entry["bb.throttle.group"] == "bb.slow" and entry["updated"] > 0
        assert "bb.throttle.expected_wait_s" in entry
        groups = {g["group"]: g for g in sampler.overview()["groups"]}
        assert groups["bb.slow"]["throttling"] == 1 and groups["bb.fast"]["throttling"] == 0
        # Over HTTP, as the pages read it.
        with DashboardServer(tb.board, dash) as server:
            slow_page = await asyncio.to_thread(_get_json, f"{server.url}/api/groups/bb.slow")
            fast_page = await asyncio.to_thread(_get_json, f"{server.url}/api/groups/bb.fast")
            overview = await asyncio.to_thread(_get_json, f"{server.url}/api/overview")
        assert [(t["agent"], t["topic"]) for t in slow_page["throttled"]] == [
            ("fast", "bb.bp.Result")
        ]
        assert slow_page["throttled"][0]["bb.throttle.state"] == "paused"
        assert fast_page["throttled"] == []
        assert [t["agent"] for t in overview["backpressure"]["throttled"]] == ["fast"]

        release.set()
        while sampler.overview()["backpressure"]["throttled"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
            sampler.sample()
        assert sampler.group("bb.slow")["throttled"] == []  # type: ignore[index]
        await tb.run_until_idle()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _by(rows: list[dict[str, Any]], column: str) -> dict[str, dict[str, Any]]:
    return {row.pop(column): row for row in rows}


def test_the_runs_api_gives_each_run_s_model_calls_tokens_and_cost(tmp_path: Path) -> None:
    """The runs of tests/test_llm_costs.py (five calls, one unpriced and one failed, in run
    ``costs``; one in ``costs-other``), and a run with no model call at all."""
    traces, plain = tmp_path / "traces", tmp_path / "plain"
    write_cost_runs(traces)
    write_plain_run(plain)
    with Blackboard("memory://") as board:
        settings = DashboardSettings(port=0, audit_log=tmp_path / "audit.jsonl", traces=traces)
        with DashboardServer(board, settings) as server:
            runs = {r["run_id"]: r for r in _get_json(f"{server.url}/api/runs")["runs"]}
            report = _get_json(f"{server.url}/api/runs/{RUN}")
        settings = settings.model_copy(update={"traces": plain})
        with DashboardServer(board, settings) as server:
            [none] = _get_json(f"{server.url}/api/runs")["runs"]
            none_report = _get_json(f"{server.url}/api/runs/plain")
    assert set(runs) == {RUN, OTHER}
    row = runs[RUN]
    assert (row["scenario"], row["policy"], row["spans_lost"]) == ("c", "baseline", 0)
    assert (row["llm_calls"], row["llm_failed"], row["llm_unpriced"]) == (5, 1, 1)
    assert (row["llm_input_tokens"], row["llm_output_tokens"], row["llm_cost_usd"]) == (
        230,
        35,
        0.875,
    )
    assert (runs[OTHER]["llm_calls"], runs[OTHER]["llm_cost_usd"]) == (1, 1.0)
    assert _by(report["llm_by_agent"], "agent") == EXPECTED["agent"][1]
    assert _by(report["llm_by_model"], "model") == EXPECTED["model"][1]
    # No model calls: zeros, no cost, empty tables; the rest of the page as before.
    assert (none["llm_calls"], none["llm_input_tokens"], none["llm_output_tokens"]) == (0, 0, 0)
    assert none["llm_cost_usd"] is None and none["spans_written"] == 1
    assert none_report["llm_by_agent"] == none_report["llm_by_model"] == []
    assert none_report["summary"]["processed"] == 1
