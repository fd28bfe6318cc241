"""The dashboard in a real headless browser (Debian's chromium driven by Playwright), over a
real in-process store that a real worker processes while the pages watch it.

Screenshots of the pages go to ``docs/screenshots/``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.agent import App
from agents.context import Context
from agents.retry import RetryPolicy
from agents.settings import RunnerSettings
from agents.worker import Worker
from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.deadletters import DeadLetters
from blackboard.records import TopicPartition
from blackboard.shell.dashboard.server import DashboardServer
from blackboard.shell.dashboard.settings import DashboardSettings
from scheduler.throttle import BackpressureSettings
from scheduler.throttle_hooks import backpressure
from tests.contract.types import Result, Task, registry
from tests.services import in_ci, unique_name
from tests.test_cli import CLI

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
KEY = "test-key-0123"
FAST = RunnerSettings(commit_interval_ms=5, idle_poll_s=0.05, shutdown_grace_s=5)


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``check`` until it holds, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class WorkerThread:
    """A real Worker running its agents on its own event loop in a thread."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.create_task(self.worker.run())
        await self.worker.started()
        self._ready.set()
        await task

    def __enter__(self) -> WorkerThread:
        self._thread.start()
        assert self._ready.wait(20), "worker did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.worker.stop)
        self._thread.join(20)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} missing (bash .ci/install-services.sh installs it)"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg
    finally:
        context.close()
    assert not errors, errors


def _shot(pg: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _open(pg: Any, url: str) -> None:
    pg.goto(url)
    pg.wait_for_selector("body[data-ready='1']", timeout=15_000)
    assert pg.locator("#page-error").count() == 0, pg.locator("#page-error").inner_text()


def _get(url: str, key: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _post(url: str, body: dict[str, Any], key: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
    req = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _settings(tmp_path: Path, **extra: Any) -> DashboardSettings:
    return DashboardSettings(
        port=0,
        api_key=KEY,
        audit_log=tmp_path / "audit.jsonl",
        sample_interval_s=0.25,
        window=10,
        lag_threshold=50,
        **extra,
    )


def test_pages_render_and_the_lag_chart_follows_a_running_worker(page: Any, tmp_path: Path) -> None:
    async def slow(task: Task, ctx: Context) -> Result:
        await asyncio.sleep(0.02)
        return Result(n=task.n, by="slow")

    app = App("test", registry=registry)
    app.add(slow, consumes=Task, publishes=Result, concurrency=2)
    board = Blackboard("memory://", registry=registry)
    with (
        DashboardServer(board, _settings(tmp_path)) as server,
        WorkerThread(Worker(app, board, FAST)),
    ):
        board.publish_many([Task(n=i) for i in range(400)])
        eventually(lambda: _get(f"{server.url}/api/groups/bb.slow")[0] == 200, "the group")

        _open(page, f"{server.url}/groups/bb.slow")
        chart = page.locator("#lag-chart")
        first = int(chart.get_attribute("data-points") or 0)
        page.wait_for_function(
            f"Number(document.getElementById('lag-chart').dataset.points) >= {first + 4}",
            timeout=15_000,
        )
        lags = page.evaluate("document.getElementById('lag-chart').data[0].y")
        assert len(lags) >= first + 4 and max(lags) > 0
        assert len(set(lags)) > 1, lags  # the line moves as the worker catches up
        assert page.locator("#partitions-table tbody tr").count() == 8
        assert int(page.locator("#desired-workers").inner_text()) >= 1
        _shot(page, "group")

        _open(page, f"{server.url}/topics")
        assert page.locator("#topics-table").get_by_text("bb.test.Task").count() >= 1
        _shot(page, "topics")

        eventually(lambda: len(list(board.read(Result))) == 400, "every task processed", 30)
        eventually(
            lambda: _get(f"{server.url}/api/overview")[1]["total_lag"] == 0, "lag sampled as 0"
        )
        _open(page, f"{server.url}/")
        row = page.locator("#groups-table tbody tr", has_text="bb.slow")
        assert row.locator(".badge").inner_text() == "OK"
        assert page.locator("#agents-table").get_by_text("closed").count() == 1
        assert page.locator("#ov-dlq").inner_text() == "0"
        _shot(page, "overview")


def test_throttled_publishers_show_on_the_overview_and_the_consuming_group_live(
    page: Any, tmp_path: Path
) -> None:
    """``fast`` (Task -> Result) is paused by backpressure while ``sink`` is stuck on Results:
    the overview lists it with its state, rate and expected wait and marks ``bb.sink`` as
    holding it back; the page of ``bb.sink`` lists it as throttled by this group and, when
    ``sink`` is released, the event stream clears the list without a reload."""
    released = threading.Event()

    async def fast(task: Task, ctx: Context) -> Result:
        return Result(n=task.n, by="fast")

    async def sink(result: Result, ctx: Context) -> None:
        if result.n >= 20:  # the test thread releases it: a threading.Event, waited off-loop
            await asyncio.to_thread(released.wait, 60)

    app = App("test", registry=registry)
    app.add(fast, consumes=Task, publishes=Result, concurrency=8)
    app.add(sink, consumes=Result, concurrency=1)
    bp = BackpressureSettings(
        enabled=True, target_wait_s=0.2, sample_interval_s=0.05, max_rate=500.0, min_rate=5.0,
        increase=200.0, decrease=0.5, burst_s=0.02,
    )  # fmt: skip
    board = Blackboard("memory://", registry=registry, hooks=[backpressure(bp)])
    overview_url = ""

    def paused() -> bool:
        doc = _get(overview_url)[1]["backpressure"]["throttled"]
        return any(t["agent"] == "fast" and t["bb.throttle.state"] == "paused" for t in doc)

    try:
        with (
            DashboardServer(board, _settings(tmp_path)) as server,
            WorkerThread(Worker(app, board, FAST)),
        ):
            overview_url = f"{server.url}/api/overview"
            board.publish_many([Task(n=i) for i in range(400)])
            eventually(paused, "fast reported paused", 30)
            _open(page, f"{server.url}/")
            row = page.locator("#throttled-table tbody tr", has_text="fast")
            row.wait_for(timeout=10_000)
            assert row.locator(".badge").inner_text() == "paused"
            assert "bb.test.Result" in row.inner_text() and "bb.sink" in row.inner_text()
            cells = row.locator("td").all_inner_texts()
            assert cells[4] == "0"  # rate / s while paused
            assert cells[6] == "never (nothing drains)" or cells[6].endswith(" s"), cells
            assert int(page.locator("#ov-throttled").inner_text()) >= 1
            sink_row = page.locator("#groups-table tbody tr", has_text="bb.sink")
            assert "publisher(s)" in sink_row.locator(".holding").inner_text()
            _shot(page, "backpressure")

            _open(page, f"{server.url}/groups/bb.sink")
            mine = page.locator("#group-throttled-table tbody tr", has_text="fast")
            mine.wait_for(timeout=10_000)
            assert "this group" in mine.inner_text()
            _shot(page, "backpressure-group")
            _open(page, f"{server.url}/groups/bb.fast")  # consumes Tasks: nothing throttled
            assert page.locator("#no-group-throttled").count() == 1

            _open(page, f"{server.url}/groups/bb.sink")
            mine.wait_for(timeout=10_000)
            events = page.evaluate("window.dashboard.events")
            released.set()
            page.wait_for_selector("#no-group-throttled", timeout=30_000)  # live, no reload
            assert page.evaluate("window.dashboard.events") > events
            eventually(lambda: len(list(board.read(Result))) == 400, "every result", 30)
    finally:
        released.set()


def test_a_dlq_replay_through_the_page_needs_the_key_and_runs_once(
    page: Any, tmp_path: Path
) -> None:
    broken = True
    calls: Counter[int] = Counter()

    async def fragile(task: Task, ctx: Context) -> Result:
        calls[task.n] += 1
        if task.n == 3 and broken:
            raise RuntimeError("parser bug")
        return Result(n=task.n, by="fragile")

    app = App("test", registry=registry)
    app.add(
        fragile,
        consumes=Task,
        publishes=Result,
        retry=RetryPolicy(max_attempts=2, backoff_ms=1, max_backoff_ms=5),
        breaker=None,
    )
    board = Blackboard("memory://", registry=registry)
    dlq = DeadLetters(board)
    settings = _settings(tmp_path)
    with DashboardServer(board, settings) as server, WorkerThread(Worker(app, board, FAST)):
        board.publish_many([Task(n=i) for i in range(6)])
        eventually(lambda: len(dlq.entries()) == 1, "one dead letter")
        [entry] = dlq.entries()

        _open(page, f"{server.url}/dlq")
        assert page.locator("#dlq-table tbody tr").count() == 1
        page.locator("a.inspect").click()
        page.wait_for_selector("#dlq-inspect")
        assert "parser bug" in page.locator("#dlq-stack").inner_text()
        assert '"n": 3' in page.locator("#dlq-payload").inner_text()
        assert page.locator("#dlq-headers").get_by_text("bb.dlq.stage").count() == 1
        _shot(page, "dlq-inspect")

        # Without the key: refused, nothing re-published.
        page.locator("input.pick").check()
        page.locator("#replay-selected").click()
        page.wait_for_selector("#dlq-message .error")
        assert "API key" in page.locator("#dlq-message").inner_text()
        assert page.locator("#confirm-panel").count() == 0
        assert dlq.entries() == [entry]
        status, _ = _post(f"{server.url}/api/dlq/replay", {"ids": [entry.entry_id]})
        assert status == 401
        assert dlq.entries() == [entry] and calls[3] == 2

        # With the key: a dry run to confirm, then the replay.
        broken = False
        page.fill("#api-key", KEY)
        page.dispatch_event("#api-key", "change")
        page.locator("input.pick").check()
        page.locator("#replay-selected").click()
        page.wait_for_selector("#confirm-panel")
        assert entry.entry_id in page.locator("#confirm-panel").inner_text()
        assert dlq.entries() == [entry]  # the dry run changed nothing
        page.locator("#confirm-yes").click()
        page.wait_for_selector("#dlq-message .ok")
        assert "replayed 1" in page.locator("#dlq-message").inner_text()
        eventually(lambda: len(list(board.read(Result))) == 6, "the replayed task processed")

        board.publish(Task(n=100))  # once this marker is processed, so is anything before it
        eventually(lambda: calls[100] == 1, "the marker processed")
        assert calls[3] == 3  # two failed attempts, then the replay, once
        assert sorted(r.payload.n for r in board.read(Result)) == [0, 1, 2, 3, 4, 5, 100]  # type: ignore[attr-defined]
        topic = board.topic(Task)
        replays = [
            rec
            for p in range(board.store.topic_partitions(topic) or 0)
            for rec in board.store.read(TopicPartition(topic, p), 0, 1000)
            if rec.header("bb.replay.of") is not None
        ]
        assert len(replays) == 1  # re-published exactly once
        assert dlq.entries() == []

        status, again = _post(f"{server.url}/api/dlq/replay", {"ids": [entry.entry_id]}, KEY)
        assert status == 400 and "no open dead letter" in again["error"]
        # A new failure, purged through the page after its dry run.
        broken = True
        board.publish(Task(n=3, text="again"))
        eventually(lambda: len(dlq.entries()) == 1, "a second dead letter")
        [second] = dlq.entries()
        page.locator("#f-apply").click()
        page.wait_for_selector(f"#dlq-table >> text={second.entry_id}")
        page.locator("input.pick").check()
        page.locator("#purge-selected").click()
        page.wait_for_selector("#confirm-panel")
        assert second.entry_id in page.locator("#confirm-panel").inner_text()
        page.locator("#confirm-yes").click()
        # The replay's message is still shown (class ok too): wait for the purge's own.
        page.wait_for_selector("#dlq-message .ok >> text=purged")
        assert "purged 1" in page.locator("#dlq-message").inner_text()
        assert dlq.entries() == [] and dlq.dispositions()[second.entry_id] == "purged"

        page.locator("#f-all").check()
        page.locator("#f-apply").click()
        page.wait_for_selector("#dlq-table >> text=replayed")
        _shot(page, "dlq-after-replay")

    audit = [json.loads(line) for line in settings.audit_log.read_text().splitlines()]
    assert [(a["action"], a["outcome"]) for a in audit] == [
        ("replay", "refused"),
        ("replay", "refused"),
        ("replay", "dry_run"),
        ("replay", "ok"),
        ("replay", "error"),
        ("purge", "dry_run"),
        ("purge", "ok"),
    ]
    assert audit[3]["replayed"] == [entry.entry_id]


def test_the_runs_page_shows_and_compares_traced_runs(page: Any, tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    for seed in ("7", "8"):
        done = subprocess.run(
            [*CLI, "demo", "--ideas", "8", "--seed", seed, "--traces", str(traces), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    board = Blackboard("memory://", registry=registry)
    with DashboardServer(board, _settings(tmp_path, traces=traces)) as server:
        status, runs = _get(f"{server.url}/api/runs")
        assert status == 200 and len(runs["runs"]) == 2
        _open(page, f"{server.url}/runs")
        page.wait_for_selector("#summary-table")
        page.wait_for_selector("#red-chart .main-svg")
        assert page.locator("#latency-table tbody tr").count() >= 1
        assert "p99_ms" in page.locator("#makespan-table").inner_text()
        assert "model calls" in page.locator("#runs-table thead").inner_text()
        assert "No model calls" in page.locator("#llm-none").inner_text()  # the demo makes none
        page.locator("#cmp-go").click()
        page.wait_for_selector("#compare-table")
        assert "makespan_ms" in page.locator("#compare-table").inner_text()
        _shot(page, "runs")


def test_chromium_is_debians_and_not_a_playwright_download() -> None:
    if not shutil.which("chromium"):
        pytest.skip("chromium not installed")
    assert Path(CHROMIUM).resolve().is_relative_to("/usr")


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("kafka", marks=pytest.mark.kafka),
    ],
)
def test_the_dashboard_follows_a_worker_on_a_server_store_from_another_client(
    page: Any, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    async def slow(task: Task, ctx: Context) -> Result:
        await asyncio.sleep(0.01)
        return Result(n=task.n, by="slow")

    if backend == "redis":
        url = str(request.getfixturevalue("redis_url"))
    else:
        url = f"kafka://{request.getfixturevalue('kafka_bootstrap')}"
    prefix = unique_name("dash").replace("-", "")
    settings = BlackboardSettings(url=url, prefix=prefix, partitions=4)
    app = App("test", registry=registry)
    app.add(slow, consumes=Task, publishes=Result, concurrency=4)
    group = f"{prefix}.slow"
    with (
        Blackboard(url, registry=registry, settings=settings) as watched,
        Blackboard(url, registry=registry, settings=settings) as worked,
        DashboardServer(watched, _settings(tmp_path)) as server,
        WorkerThread(Worker(app, worked, FAST)),
    ):
        worked.publish_many([Task(n=i) for i in range(300)])
        eventually(lambda: _get(f"{server.url}/api/groups/{group}")[0] == 200, "the group", 60)
        _open(page, f"{server.url}/groups/{group}")
        page.wait_for_function(
            "document.getElementById('lag-chart').dataset.lastLag === '0'", timeout=60_000
        )
        _, doc = _get(f"{server.url}/api/groups/{group}")
        assert max(lag for _, lag in doc["history"]) > 0  # the chart saw the backlog
        assert doc["status"] == "OK" and doc["total_lag"] == 0
        assert len(doc["rows"]) == 4
        if backend == "redis":  # Redis' own figures
            assert {"delivered", "pending"} <= set(doc["rows"][0])
            assert page.locator("#partitions-table th", has_text="pending").count() == 1
