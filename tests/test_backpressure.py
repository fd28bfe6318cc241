"""Backpressure that reads lag, on the embedded store: publish throttles (AIMD on Little's law),
their state in agent status and on spans, and ``blackboard lag``'s Burrow health and KEDA
desired workers over a window of samples.

Clocks are injected wherever the code takes one, so the throttle tests run in no real time.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from agents.agent import App
from agents.context import Context
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.errors import ConfigError, StoreClosedError
from blackboard.records import AtomicCommit, CommittedOffset, TopicPartition
from blackboard.shell.cli.lag_command import lag_document, parse_duration, sample_lag
from blackboard.shell.testing import TestBoard
from blackboard.status import read_status
from blackboard.store import GroupMember, Store
from observability import tracing
from observability.runs import RunInfo
from observability.tracing import SendSpans
from scheduler.throttle import Backpressure, BackpressureSettings
from scheduler.throttle_hooks import BackpressureHook, backpressure
from tests.contract.helpers import Listener

registry = TypeRegistry()


@artifact("bp.Job", registry=registry)
class Job(BaseModel):
    n: int


@artifact("bp.Result", registry=registry)
class Result(BaseModel):
    n: int


CLI = [sys.executable, "-m", "blackboard.shell.cli.main"]
TOPIC = "bb.bp.Job"
SETTINGS = BackpressureSettings(
    enabled=True,
    target_wait_s=5.0,
    max_rate=100.0,
    min_rate=2.0,
    increase=20.0,
    decrease=0.5,
    sample_interval_s=1.0,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _board(partitions: int = 2, **bp: Any) -> Blackboard:
    return Blackboard(
        "memory://",
        registry=registry,
        settings=BlackboardSettings(partitions=partitions),
        hooks=[tracing.publish_hook, backpressure(SETTINGS.model_copy(update=bp))],
    )


def _use(board: Blackboard, bp: Backpressure) -> Backpressure:
    """Make ``bp`` (a fake clock's, say) the board's backpressure."""
    others = [h for h in board.publish_hooks if not isinstance(h, BackpressureHook)]
    hook = BackpressureHook(bp.settings, bp)
    board.publish_hooks = tuple(sorted([hook, *others], key=lambda h: h.order))
    return bp


def _own(board: Blackboard) -> Backpressure:
    hook = board.hook(BackpressureHook)
    assert hook is not None and hook.backpressure is not None
    return hook.backpressure


async def _member(store: Store, group: str, topic: str = TOPIC) -> GroupMember:
    """A member of ``group`` that owns every partition of ``topic`` (it polled once)."""
    member = await store.join(group, [topic], Listener())
    await member.poll(1, 0.01)
    return member


async def _commit(member: GroupMember, offsets: dict[int, int], topic: str = TOPIC) -> None:
    done = {TopicPartition(topic, p): CommittedOffset(o) for p, o in offsets.items()}
    await member.commit(AtomicCommit(offsets=done))


# -- settings -----------------------------------------------------------------------------------


def test_settings_are_off_by_default_and_come_from_code_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert BackpressureSettings().enabled is False
    assert Blackboard("memory://", registry=registry).hook(BackpressureHook) is None
    monkeypatch.setenv("BLACKBOARD_BACKPRESSURE", "true")
    monkeypatch.setenv("BLACKBOARD_BACKPRESSURE_TARGET_WAIT_S", "2.5")
    monkeypatch.setenv("BLACKBOARD_BACKPRESSURE_SAMPLE_INTERVAL_S", "0.2")
    hook = Blackboard("memory://", registry=registry).hook(BackpressureHook)
    assert hook is not None and hook.settings.target_wait_s == 2.5
    assert hook.settings.sample_interval_s == 0.2
    code = BackpressureSettings.from_env(max_rate=7.0)
    assert code.max_rate == 7.0 and code.enabled  # code wins, the rest from the environment
    explicit = [backpressure(BackpressureSettings(max_rate=7.0))]  # code says off: off
    off = Blackboard("memory://", registry=registry, hooks=explicit).hook(BackpressureHook)
    assert off is not None and off.backpressure is None  # stands in for the environment's
    # Settings built in code do not change with the shell: no backpressure from it.
    coded = Blackboard("memory://", registry=registry, settings=BlackboardSettings())
    assert coded.hook(BackpressureHook) is None
    # A hook given in code joins the installed ones (send spans stay).
    assert Blackboard("memory://", registry=registry, hooks=explicit).hook(SendSpans) is not None
    monkeypatch.setenv("BLACKBOARD_BACKPRESSURE_MIN_RATE", "500")
    monkeypatch.setenv("BLACKBOARD_BACKPRESSURE_MAX_RATE", "50")
    with pytest.raises(ConfigError, match="min_rate 500 is above max_rate 50"):
        Blackboard("memory://", registry=registry)


def test_a_bad_value_stops_start_up_with_one_line() -> None:
    env = {**os.environ, "BLACKBOARD_URL": "", "BLACKBOARD_BACKPRESSURE_DECREASE": "1.5"}
    out = subprocess.run(
        [*CLI, "publish", "research.Idea", '{"title": "x"}'],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "blackboard: error: invalid backpressure setting decrease: Input should be less than 1"
    ]


# -- the throttle -------------------------------------------------------------------------------


async def test_a_publisher_throttles_while_a_slow_consumer_is_behind_and_recovers() -> None:
    clock = FakeClock()
    board = _board()
    bp = Backpressure(board.store, SETTINGS, group_prefix="bb.", clock=clock)
    _use(board, bp)
    board.ensure_topics([registry.get("bp.Job")])
    slow = await _member(board.store, "bb.slow")
    # The backlog comes from another publisher (this one's bucket would wait on real time).
    raw = Blackboard(board.store, registry=registry, settings=BlackboardSettings(partitions=2))
    raw.publish_many([Job(n=i) for i in range(100)], partition_key="k")  # one partition
    [part] = {tp.partition for tp, end in board.store.end_offsets([TOPIC]).items() if end}
    counts = {TOPIC: 1}
    assert bp.wait_s(counts) == 0.0 and bp.throttle(TOPIC).state == "normal"
    board.publish(Job(n=-1), partition_key="k")  # lets it through at once

    done, rates = 0, []
    for _ in range(4):  # drains 4 records/s with 900+ behind: ~200 s expected wait > 5 s
        raw.publish_many([Job(n=i) for i in range(300)], partition_key="k")
        clock.now += 1.0
        done += 4
        await _commit(slow, {part: done})
        bp.wait_s(counts)
        rates.append(bp.throttle(TOPIC).rate)
    t = bp.throttle(TOPIC)
    assert t.state == "throttled" and t.group == "bb.slow"
    assert rates[0] > rates[-1] > 0 and rates == sorted(rates, reverse=True)
    assert t.expected_wait_s is not None and t.expected_wait_s > SETTINGS.target_wait_s
    assert t.drain_per_s == pytest.approx(4.0)
    # The bucket runs at the AIMD rate: after 1000 records the next one waits 1000 / rate.
    bp.take({TOPIC: 1000})
    assert bp.wait_s(counts) == pytest.approx(1000 / t.rate, rel=0.02)

    # The consumer catches up: lag 0, additive increase back to the maximum.
    end = sum(board.store.end_offsets([TOPIC]).values())
    states = []
    for _ in range(8):
        clock.now += 1.0
        await _commit(slow, {part: end})
        bp.wait_s(counts)
        states.append(bp.throttle(TOPIC).state)
    assert states[0] == "throttled" and states[-1] == "normal"
    assert bp.throttle(TOPIC).rate == SETTINGS.max_rate and bp.throttle(TOPIC).lag == 0
    await slow.close()
    board.close()


async def test_lag_is_read_once_per_sample_interval_not_per_publish() -> None:
    clock = FakeClock()
    board = _board()
    calls = 0
    lag = board.store.lag

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return lag(*args, **kwargs)

    board.store.lag = counting  # type: ignore[method-assign]
    _use(board, Backpressure(board.store, SETTINGS, group_prefix="bb.", clock=clock))
    for i in range(50):
        board.publish(Job(n=i))
    assert calls == 1
    clock.now += 1.0
    board.publish(Job(n=50))
    assert calls == 2
    board.close()


async def test_a_publisher_pauses_while_nothing_drains_and_close_or_ctrl_c_ends_the_wait() -> None:
    clock = FakeClock()
    board = _board()
    bp = Backpressure(board.store, SETTINGS, group_prefix="bb.", clock=clock)
    _use(board, bp)
    board.ensure_topics([registry.get("bp.Job")])
    stuck = await _member(board.store, "bb.stuck")
    board.publish_many([Job(n=i) for i in range(20)])
    for _ in range(12):  # the group commits nothing: infinite wait, rate halves every sample
        clock.now += 1.0
        bp.wait_s({TOPIC: 1})
    t = bp.throttle(TOPIC)
    assert t.state == "paused" and t.rate == 0.0 and t.expected_wait_s == math.inf
    assert t.attributes()["bb.throttle.expected_wait_s"] is None  # JSON has no infinity
    assert 0 < bp.wait_s({TOPIC: 1}) <= SETTINGS.sample_interval_s

    # A publisher blocked on a real clock: close() ends its wait at once.
    real = _board(sample_interval_s=60.0)
    _use(real, Backpressure(real.store, SETTINGS, group_prefix="bb."))
    _own(real).throttle(TOPIC).controller.rate = 0.0  # paused
    _own(real).wait_s({TOPIC: 1})  # the first sample is taken: next in 60 s
    task = asyncio.get_running_loop().run_in_executor(None, real.publish, Job(n=1))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    real.close()
    with pytest.raises(StoreClosedError):
        await task
    assert time.monotonic() - started < 1.0
    await stuck.close()
    board.close()


async def test_ignored_agents_groups_never_throttle_and_the_others_still_do() -> None:
    """A group that stopped for good (``bb.retired``: lag, never commits) pauses publishers
    until its agent is named in ``ignore_agents``; then only the other groups count, and a
    second stuck group that is not named still pauses the publisher."""
    board = _board(ignore_agents=("retired",))  # the Blackboard's own throttle, real settings
    bp = _own(board)
    board.ensure_topics([registry.get("bp.Job")])
    retired = await _member(board.store, "bb.retired")
    board.publish_many([Job(n=i) for i in range(20)])  # sampled once, on the real clock
    now = time.monotonic()
    for _ in range(12):  # without the setting this pauses (the test above)
        now += 1.0
        assert bp.wait_s({TOPIC: 1}, now) < 1.0
    t = bp.throttle(TOPIC)
    assert t.state == "normal" and t.rate == SETTINGS.max_rate and t.group is None

    stuck = await _member(board.store, "bb.stuck")  # not ignored: it counts
    for _ in range(12):
        now += 1.0
        bp.wait_s({TOPIC: 1}, now)
    assert t.state == "paused" and t.group == "bb.stuck"
    # The agent runner's throttle (agent_limiter) takes the same list: ignored + own group.
    from scheduler.throttle_hooks import agent_limiter

    limiter = agent_limiter(board, "bb.fast", ["bp.Job"], None, lambda: None)
    assert limiter is not None
    assert limiter.backpressure._exclude == {"bb.fast", "bb.retired"}
    for m in (retired, stuck):
        await m.close()
    board.close()


def test_ignored_agents_come_from_code_or_the_environment_and_bad_names_fail_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert BackpressureSettings().ignore_agents == ()
    assert BackpressureSettings(ignore_agents=["b", "a", "b"]).ignore_agents == ("a", "b")
    monkeypatch.setenv("BLACKBOARD_BACKPRESSURE_IGNORE_AGENTS", "novelty, old-summarizer")
    from_env = BackpressureSettings.from_env()
    assert from_env.ignore_agents == ("novelty", "old-summarizer")
    assert BackpressureSettings.from_env(ignore_agents=("x",)).ignore_agents == ("x",)  # code wins
    for bad, name in (("novelty,,x", "''"), ("bb novelty", "'bb novelty'")):
        monkeypatch.setenv("BLACKBOARD_BACKPRESSURE_IGNORE_AGENTS", bad)
        with pytest.raises(ConfigError) as info:
            Blackboard("memory://", registry=registry)
        line = str(info.value)
        assert line.startswith(f"invalid backpressure setting ignore_agents: {name} is not an")
        assert "\n" not in line
    env = {**os.environ, "BLACKBOARD_URL": "", "BLACKBOARD_BACKPRESSURE_IGNORE_AGENTS": "a/b"}
    out = subprocess.run(
        [*CLI, "publish", "research.Idea", '{"title": "x"}'],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "blackboard: error: invalid backpressure setting ignore_agents: 'a/b' is not an agent "
        "name ([A-Za-z0-9][A-Za-z0-9._-]*)"
    ]


def test_ctrl_c_stops_a_paused_publisher_promptly(tmp_path: Path) -> None:
    """``blackboard publish`` paused by a consumer that never drains: SIGINT ends it at once."""
    store = f"memory:///{tmp_path}/bb.mem"
    seed = Blackboard(store, registry=_research())
    seed.ensure_topics(seed.registry.types())
    seed.publish_json("research.Idea", {"title": "x"})
    asyncio.run(_group_with_lag(seed))
    seed.close()
    env = {
        **os.environ,
        "BLACKBOARD_URL": "",
        "BLACKBOARD_BACKPRESSURE": "1",
        "BLACKBOARD_BACKPRESSURE_MIN_RATE": "50",
        "BLACKBOARD_BACKPRESSURE_MAX_RATE": "50",
        "BLACKBOARD_BACKPRESSURE_SAMPLE_INTERVAL_S": "0.05",
    }
    items = "".join(json.dumps({"title": f"t{i}"}) + "\n" for i in range(1000))
    proc = subprocess.Popen(
        [*CLI, "publish", "research.Idea", "-", "--store", store],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdin is not None
        proc.stdin.write(items)
        proc.stdin.close()
        time.sleep(1.5)  # start-up, then the throttle pauses: nothing drains
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=5)
        assert time.monotonic() - started < 2.0
        assert proc.returncode == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _research() -> TypeRegistry:
    from agents import demo

    return demo.registry


async def _group_with_lag(board: Blackboard) -> None:
    """``bb.novelty`` committed at 0 on every partition: it has lag and never drains."""
    topic = board.topics.for_type("research.Idea")
    member = await _member(board.store, "bb.novelty", topic)
    await _commit(member, dict.fromkeys(range(board.settings.partitions), 0), topic)
    await member.close()


# -- agents -------------------------------------------------------------------------------------


async def test_an_agent_throttles_its_outputs_and_reports_the_state() -> None:
    """``fast`` turns Jobs into Results; ``slow`` consumes Results and gets stuck (one slot)
    until released. The fast agent's outputs back up: it throttles, then pauses (nothing
    drains), reports that in its status, holds its outputs back, and once the slow agent
    drains again it goes back to normal and everything is published exactly once."""
    app = App("bp", registry=registry)

    async def fast(job: Job, ctx: Context) -> Result:
        return Result(n=job.n)

    release = asyncio.Event()

    async def slow(result: Result, ctx: Context) -> None:
        if result.n >= 20:
            await release.wait()

    app.add(fast, consumes=Job, publishes=Result, concurrency=8)
    app.add(slow, consumes=Result, concurrency=1)
    settings = SETTINGS.model_copy(
        update={"target_wait_s": 0.2, "sample_interval_s": 0.05, "max_rate": 500.0,
                "min_rate": 5.0, "increase": 200.0, "burst_s": 0.02}
    )  # fmt: skip
    async with TestBoard(app, partitions=2, backpressure=settings) as tb:
        runner = next(r for r in tb.worker.runners if r.spec.name == "fast")
        assert runner.throttle is not None
        throttle = runner.throttle.backpressure.throttle("bb.bp.Result")
        tb.board.publish_many([Job(n=i) for i in range(400)])
        deadline = time.monotonic() + 20
        seen: list[tuple[str, float]] = []
        while throttle.state != "paused":
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.01)
            seen.append((throttle.state, throttle.rate))
        rates = [r for state, r in seen if state == "throttled"]
        assert rates and rates == sorted(rates, reverse=True)  # multiplicative decrease
        reported: dict[str, Any] = {}
        while reported.get("bb.throttle.state") != "paused":
            assert time.monotonic() < deadline, reported
            await asyncio.sleep(0.05)
            statuses = {s.agent: s for s in read_status(tb.board)}
            if "fast" in statuses:
                reported = statuses["fast"].throttle.get("bb.bp.Result", {})
        assert reported["bb.throttle.rate"] == 0.0 and reported["bb.throttle.lag"] > 0
        held = sum(tb.board.store.end_offsets(["bb.bp.Result"]).values())
        assert held < 300  # outputs were held back while the consumer was stuck
        release.set()
        while throttle.state != "normal":
            assert time.monotonic() < deadline, (throttle.state, throttle.rate)
            await asyncio.sleep(0.01)
        await tb.run_until_idle()
        assert sorted(a.payload.n for a in tb.artifacts(Result)) == list(range(400))


# -- spans --------------------------------------------------------------------------------------


async def test_send_spans_carry_the_throttle_state(tmp_path: Path) -> None:
    clock = FakeClock()
    board = _board()
    _use(board, Backpressure(board.store, SETTINGS, group_prefix="bb.", clock=clock))
    board.ensure_topics([registry.get("bp.Job")])
    stuck = await _member(board.store, "bb.stuck")
    trace = tracing.start_tracing(tmp_path, RunInfo.create(scenario="bp"))
    try:
        board.publish(Job(n=0))
        for n in (1, 2):
            clock.now += 1.0
            board.publish(Job(n=n))  # lag, nothing drains: the rate halves every sample
    finally:
        trace.stop()
    from observability import segments

    con = segments.open_runs(tmp_path, [trace.run.run_id])
    rows = con.sql(
        "SELECT attributes FROM spans WHERE operation = 'send' ORDER BY start_ns"
    ).fetchall()
    attrs = [orjson.loads(r[0]) for r in rows]
    assert [a["bb.throttle.state"] for a in attrs] == ["normal", "throttled", "throttled"]
    assert [a["bb.throttle.rate"] for a in attrs] == [100.0, 50.0, 25.0]
    con.close()
    await stuck.close()
    board.close()


async def test_an_agent_s_output_spans_carry_its_throttle_state(tmp_path: Path) -> None:
    app = App("bp", registry=registry)

    async def fast(job: Job, ctx: Context) -> Result:
        return Result(n=job.n)

    app.add(fast, consumes=Job, publishes=Result)
    trace = tracing.start_tracing(tmp_path, RunInfo.create(scenario="bp-agent"))
    try:
        async with TestBoard(app, backpressure=SETTINGS) as tb:
            tb.board.publish_many([Job(n=i) for i in range(5)])
            await tb.run_until_idle()
    finally:
        trace.stop()
    from observability import segments

    con = segments.open_runs(tmp_path, [trace.run.run_id])
    rows = con.sql(
        "SELECT attributes FROM spans WHERE operation = 'send' AND agent = 'fast'"
    ).fetchall()
    con.close()
    assert len(rows) == 5
    for (attributes,) in rows:
        attrs = orjson.loads(attributes)
        assert attrs["bb.throttle.state"] == "normal" and attrs["bb.throttle.rate"] == 100.0


# -- blackboard lag -----------------------------------------------------------------------------


async def test_lag_health_is_stall_for_a_stuck_group_and_ok_for_a_draining_one() -> None:
    """Three groups on one topic of 4 partitions, 40 records each, sampled 5 times: ``drains``
    commits 10 more per partition between samples (OK, then caught up), ``stuck`` moves on
    partitions 1-3 only (partition 0 STALL, the group STALL), ``stopped`` never commits
    (STOP). Desired workers = ceil(lag / threshold), at most 4."""
    board = _board(partitions=4)
    board.ensure_topics([registry.get("bp.Job")])
    for p in range(4):
        board.publish_many([Job(n=i) for i in range(40)], partition_key=_key_for(board, p))
    drains = await _member(board.store, "bb.drains")
    stuck = await _member(board.store, "bb.stuck")
    stopped = await _member(board.store, "bb.stopped")
    await _commit(stopped, dict.fromkeys(range(4), 2))
    loop = asyncio.get_running_loop()
    step = 0
    times = iter([0.0, 1.0, 2.0, 3.0, 4.0])

    def sleep(_: float) -> None:  # between samples: the groups commit (on the test's loop)
        nonlocal step
        step += 1
        moves = [
            _commit(drains, dict.fromkeys(range(4), min(40, 10 * step))),
            _commit(stuck, {0: 5, **dict.fromkeys(range(1, 4), 5 + step)}),
        ]
        for coro in moves:
            asyncio.run_coroutine_threadsafe(coro, loop).result()

    await _commit(stuck, {0: 5, 1: 5, 2: 5, 3: 5})
    progress: list[tuple[int, int]] = []
    windows, rows, interrupted = await asyncio.to_thread(
        sample_lag, board, None, 5, 4.0, sleep=sleep, clock=lambda: next(times),
        progress=lambda n, total: progress.append((n, total)),
    )  # fmt: skip
    assert not interrupted and progress[-1] == (5, 5)
    doc = lag_document(rows, windows, [], 25, 4.0)
    groups = {g["group"]: g for g in doc["groups"]}
    assert groups["bb.drains"]["status"] == "OK" and groups["bb.drains"]["total_lag"] == 0
    assert groups["bb.drains"]["desired_workers"] == 0
    assert groups["bb.stuck"]["status"] == "STALL"
    assert {r["partition"]: r["status"] for r in groups["bb.stuck"]["rows"]} == {
        0: "STALL",
        1: "OK",
        2: "OK",
        3: "OK",
    }
    assert groups["bb.stuck"]["total_lag"] == 35 + 3 * 31
    assert groups["bb.stuck"]["desired_workers"] == 4  # ceil(128 / 25) = 6, capped at 4
    by_50 = {g["group"]: g for g in lag_document(rows, windows, [], 50, 4.0)["groups"]}
    assert by_50["bb.stuck"]["desired_workers"] == math.ceil(128 / 50) == 3
    assert groups["bb.stopped"]["status"] == "STOP"
    assert groups["bb.stopped"]["desired_workers"] == 4
    assert groups["bb.drains"]["drain_per_s"] == pytest.approx(40.0)
    [topic] = doc["topics"]
    assert topic["group"] == "bb.stopped" and topic["stalled"]  # nothing drains there
    stuck_topic = groups["bb.stuck"]["topics"][0]
    assert stuck_topic["expected_wait_s"] == pytest.approx(128 / 3.0, abs=0.001)  # lag / 3/s
    for m in (drains, stuck, stopped):
        await m.close()
    board.close()


def _key_for(board: Blackboard, partition: int) -> str:
    from blackboard.records import partition_for

    return next(
        k
        for k in (f"k{i}" for i in range(1000))
        if partition_for(k.encode(), board.settings.partitions) == partition
    )


def test_blackboard_lag_json_over_a_window_is_one_document(tmp_path: Path) -> None:
    store = f"memory:///{tmp_path}/bb.mem"
    board = Blackboard(store, registry=registry, settings=BlackboardSettings(url=store))
    board.ensure_topics([registry.get("bp.Job")])
    board.publish_many([Job(n=i) for i in range(30)])
    lag = asyncio.run(_commit_and_leave(board))
    board.close()
    env = {**os.environ, "BLACKBOARD_URL": ""}
    args = ["lag", "--store", store, "--window", "0.2s", "--samples", "3", "--lag-threshold", "7"]
    out = subprocess.run(
        [*CLI, *args, "--json"], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)  # the whole of stdout is one document
    [group] = doc["groups"]
    assert group["group"] == "bb.idle" and group["status"] == "STOP"  # nobody commits
    assert group["total_lag"] == lag
    assert group["desired_workers"] == min(8, math.ceil(lag / 7))
    assert doc["samples"] == 3 and "sample 3/3" in out.stderr
    assert {r["status"] for r in group["rows"] if r["lag"]} == {"STOP"}
    text = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env)
    wanted = min(8, math.ceil(lag / 7))
    assert f"group bb.idle: STOP, lag {lag}, desired workers {wanted}" in text.stdout
    assert "topic bb.bp.Job: expected wait never (nothing drains)" in text.stdout
    # Ctrl-C while sampling: what was sampled is printed, as one document; exit 130.
    proc = subprocess.Popen(
        [*CLI, "lag", "--store", store, "--window", "60s", "--samples", "3", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        assert "sample 1/3" in proc.stderr.readline()  # the first sample is taken
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - started < 3.0
    assert proc.returncode == 130 and "interrupted after 1 samples" in stderr
    partial = json.loads(stdout)
    assert partial["samples"] == 1 and partial["groups"][0]["status"] == "OK"  # too few
    bad = subprocess.run(
        [*CLI, "lag", "--store", store, "--window", "soon"], capture_output=True, text=True,
        timeout=60, env=env,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("blackboard: error: --window")


async def _commit_and_leave(board: Blackboard) -> int:
    """``bb.idle`` commits 1 on every partition with records and leaves; its lag."""
    member = await _member(board.store, "bb.idle")
    ends = board.store.end_offsets([TOPIC])
    await _commit(member, {tp.partition: 1 for tp, end in ends.items() if end})
    await member.close()
    return sum(max(0, end - 1) for end in ends.values())


def test_durations() -> None:
    assert parse_duration("10s") == 10.0 and parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120.0 and parse_duration("3") == 3.0
    with pytest.raises(ConfigError):
        parse_duration("ten")


# -- on a broker --------------------------------------------------------------------------------


@pytest.mark.kafka
async def test_on_kafka_an_agent_pauses_while_its_consumer_is_stuck_and_resumes(
    kafka_bootstrap: str,
) -> None:
    """The runner reads lag on a thread on Kafka (a network call); the same story as on the
    embedded store: stuck consumer -> paused producer agent, released -> normal, all once."""
    import uuid

    from agents.worker import Worker
    from blackboard.shell.testing import FAST_SETTINGS

    url = f"kafka://{kafka_bootstrap}"
    prefix = f"bp{uuid.uuid4().hex[:10]}"
    settings = BlackboardSettings(url=url, prefix=prefix, partitions=2)
    bp = SETTINGS.model_copy(
        update={"target_wait_s": 0.5, "sample_interval_s": 0.2, "max_rate": 100.0,
                "min_rate": 5.0, "increase": 100.0, "burst_s": 0.05}
    )  # fmt: skip
    board = Blackboard(url, registry=registry, settings=settings, hooks=[backpressure(bp)])
    app = App("bp", registry=registry)
    release = asyncio.Event()

    async def fast(job: Job, ctx: Context) -> Result:
        return Result(n=job.n)

    async def slow(result: Result, ctx: Context) -> None:
        if result.n >= 10:
            await release.wait()

    app.add(fast, consumes=Job, publishes=Result, concurrency=8)
    app.add(slow, consumes=Result, concurrency=1)
    worker = Worker(app, board, FAST_SETTINGS)
    running = asyncio.create_task(worker.run())
    try:
        await worker.started()
        runner = next(r for r in worker.runners if r.spec.name == "fast")
        assert runner.throttle is not None and runner.throttle.backpressure._background
        throttle = runner.throttle.backpressure.throttle(f"{prefix}.bp.Result")
        board.publish_many([Job(n=i) for i in range(300)])
        deadline = time.monotonic() + 60
        while throttle.state != "paused":
            assert time.monotonic() < deadline, (throttle.state, throttle.rate, throttle.lag)
            await asyncio.sleep(0.05)
        release.set()
        while throttle.state != "normal":
            assert time.monotonic() < deadline, (throttle.state, throttle.rate, throttle.lag)
            await asyncio.sleep(0.05)

        def results() -> list[int]:
            return sorted(a.payload.n for a in board.read(Result))  # type: ignore[attr-defined]

        while results() != list(range(300)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    finally:
        worker.stop()
        await running
        board.close()


async def test_an_agents_throttle_keeps_its_own_rate_limit_in_charge() -> None:
    """The backpressure limiter wraps the agent's own limiter (which may live in Redis): the
    own limit still gates starts and gets the reported tokens, open and close reach it."""
    from scheduler.ratelimit import RateLimit
    from scheduler.throttle_hooks import ThrottledLimiter

    class Recording:
        def __init__(self) -> None:
            self.inner = RateLimit(requests_per_s=1.0, tokens_per_s=100.0, burst_s=1.0).limiter()
            self.calls: list[str] = []

        def wait_s(self, now: float) -> float:
            return self.inner.wait_s(now)

        def started(self, now: float) -> None:
            self.calls.append("started")
            self.inner.started(now)

        def used_tokens(self, now: float, tokens: float) -> None:
            self.calls.append(f"tokens {tokens:g}")
            self.inner.used_tokens(now, tokens)

        async def open(self) -> None:
            self.calls.append("open")

        async def close(self) -> None:
            self.calls.append("close")

    board = _board()
    own = Recording()
    limiter = ThrottledLimiter(own, Backpressure(board.store, SETTINGS, clock=FakeClock()), [TOPIC])
    await limiter.open()
    assert limiter.wait_s(1000.0) == 0.0
    limiter.started(1000.0)
    assert limiter.wait_s(1000.0) == pytest.approx(1.0)  # the own 1 request/s is spent
    limiter.used_tokens(1000.0, 250.0)
    assert limiter.wait_s(1001.0) == pytest.approx(0.5)  # and the tokens/s debt holds it
    await limiter.close()
    assert own.calls == ["open", "started", "tokens 250", "close"]
    board.close()


def test_backpressure_given_in_code_is_not_upset_by_a_bad_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BLACKBOARD_BACKPRESSURE", "maybe")
    with pytest.raises(ConfigError, match="invalid backpressure setting"):
        Blackboard("memory://", registry=registry)  # the installed hook reads the variable
    given = [backpressure(SETTINGS)]  # the one in code stands in before the other is made
    board = Blackboard("memory://", registry=registry, hooks=given)
    hook = board.hook(BackpressureHook)
    assert hook is not None and hook.settings == SETTINGS
    assert [type(h) for h in board.publish_hooks].count(BackpressureHook) == 1
    board.close()
