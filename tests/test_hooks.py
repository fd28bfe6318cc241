"""An agent's own hooks (issue 15): a concern written as a hook sees every attempt, output and
commit, and can hold calls back, without touching the loop."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from agents.agent import App
from agents.attempt import Call
from agents.context import Context
from agents.hooks import Hook, Hooks
from agents.retry import RetryPolicy
from blackboard.artifacts import Envelope
from blackboard.records import AtomicCommit
from blackboard.shell.testing import TestBoard
from tests.contract.types import Result, Task, registry


class Usage(Hook):
    """Accounts what each call reported, as the LLM usage accounting will."""

    def __init__(self) -> None:
        self.tokens = 0.0
        self.ended: Counter[str] = Counter()
        self.outputs: list[str] = []
        self.committed_records = 0

    def call_returned(self, call: Call, context: Context) -> None:
        self.tokens += context.tokens

    def attempt_ended(self, call: Call, error: BaseException | None, stage: str | None) -> None:
        self.ended["ok" if error is None else f"{stage}:{'retry' if call.retrying else 'dlq'}"] += 1

    def output(self, envelope: Envelope) -> Envelope:
        self.outputs.append(envelope.type)
        return envelope

    def committed(
        self, commit: AtomicCommit, records: int, start_ns: int, error: BaseException | None
    ) -> None:
        if error is None:
            self.committed_records += records


class OneAtATime(Hook):
    """A gate: at most one call runs at once, whatever the agent's concurrency."""

    def slot_limit(self, concurrency: int, running: int) -> int:
        return 1


async def test_a_hook_sees_every_attempt_output_and_commit() -> None:
    usage = Usage()

    async def worker(task: Task, ctx: Context) -> Result:
        ctx.report_tokens(10)
        if task.n == 3 and ctx.attempt == 1:
            raise RuntimeError("flaky")
        if task.n == 4:
            raise ValueError("poison")
        return Result(n=task.n)

    app = App("test", registry=registry)
    app.agent(
        consumes=Task,
        publishes=Result,
        retry=RetryPolicy(max_attempts=2, backoff_ms=1, retry_on=(RuntimeError,)),
        hooks=[usage],
    )(worker)
    async with TestBoard(app) as tb:
        for n in range(5):
            tb.publish(Task(n=n))
        await tb.run_until_idle()
    assert usage.ended == Counter({"ok": 4, "process:retry": 1, "process:dlq": 1})
    assert usage.tokens == 60  # six calls
    assert usage.outputs == ["test.Result"] * 4
    assert usage.committed_records == 5


async def test_a_gate_hook_holds_calls_back() -> None:
    running = 0
    most = 0

    async def slow(task: Task, ctx: Context) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1

    app = App("test", registry=registry)
    app.agent(consumes=Task, concurrency=8, hooks=[OneAtATime()])(slow)
    async with TestBoard(app, partitions=1) as tb:
        for n in range(10):
            tb.publish(Task(n=n))
        await tb.run_until_idle()
    assert most == 1


def test_only_the_hooks_that_override_a_point_are_called_there() -> None:
    usage, gate = Usage(), OneAtATime()
    hooks = Hooks([usage, gate])
    assert hooks.slot_limit == (gate,) and hooks.call_returned == (usage,)
    assert hooks.before_attempt == () and hooks.start_delay == ()
    assert hooks.limit(8, 0) == 1 and Hooks([usage]).limit(8, 0) == 8


class OnlyTenant(Hook):
    """A visibility check: the agent sees one tenant's artifacts only."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant

    def admitting(self, envelope: Envelope) -> bool:
        return envelope.tenant == self.tenant


async def test_an_admission_hook_skips_what_the_agent_may_not_see() -> None:
    seen: list[int] = []

    async def worker(task: Task, ctx: Context) -> None:
        seen.append(task.n)

    app = App("test", registry=registry)
    app.agent(consumes=Task, hooks=[OnlyTenant("acme")])(worker)
    async with TestBoard(app) as tb:
        for n in range(6):
            tb.publish(Task(n=n), tenant="acme" if n % 2 else "globex")
        await tb.run_until_idle()  # the skipped records are committed too: lag 0
        assert tb.lag() == 0
    assert sorted(seen) == [1, 3, 5]


class Sleepy(Usage):
    """Leaves the per-record start points while asleep, as tracing does while it is off."""

    def __init__(self) -> None:
        super().__init__()
        self.asleep = True

    def dormant(self) -> bool:
        return self.asleep


def test_a_dormant_hook_leaves_only_the_per_record_points_until_it_wakes() -> None:
    sleepy = Sleepy()
    hooks = Hooks([sleepy])
    assert hooks.output == () and hooks.attempt_ended == ()
    assert hooks.committed == (sleepy,) and hooks.call_returned == (sleepy,)
    sleepy.asleep = False
    assert hooks.output == ()  # until the runner's next loop turn asks
    hooks.wake_up()
    assert hooks.output == (sleepy,) and hooks.attempt_ended == (sleepy,)
    sleepy.asleep = True
    hooks.wake_up()
    assert hooks.output == ()


async def test_spans_follow_tracing_turned_on_and_off_while_a_worker_runs(tmp_path: Path) -> None:
    """The tracing hook sleeps while tracing is off (no per-record calls) and wakes at the
    runner's next loop turn once it is on: records processed meanwhile get their spans."""
    from observability import segments, tracing
    from observability.runs import RunInfo

    async def worker(task: Task, ctx: Context) -> Result:
        return Result(n=task.n)

    app = App("test", registry=registry)
    app.agent(consumes=Task, publishes=Result, name="traced")(worker)
    async with TestBoard(app) as tb:
        tb.publish(Task(n=0))
        await tb.run_until_idle()
        run = tracing.start_tracing(tmp_path, RunInfo.create(scenario="toggle"))
        try:
            for n in range(1, 4):
                tb.publish(Task(n=n))
            await tb.run_until_idle()
        finally:
            counts = run.stop()
        tb.publish(Task(n=4))
        await tb.run_until_idle()
    assert counts.ended >= 9  # 3 external sends, 3 process, 3 output sends, settles
    con = segments.open_runs(tmp_path, [run.run.run_id])
    rows = con.execute(
        "SELECT name, operation FROM spans WHERE operation = 'process' ORDER BY name"
    ).fetchall()
    assert len(rows) == 3  # the records of n = 1, 2, 3: none for n = 0 or n = 4


class Exploding(Hook):
    """A gate that fails on one record: its call must fail for good, and what the gates before
    it granted the call must be given back (a half-open breaker's trial call, here)."""

    def before_attempt(self, call: Call) -> bool:
        if call.payload.n == 1:
            raise RuntimeError("the gate broke")
        return True


async def test_a_gate_that_raises_dead_letters_the_call_and_gives_the_trial_back() -> None:
    from agents.breaker import BreakerPolicy
    from agents.retry import RetryPolicy
    from blackboard.deadletters import DeadLetters

    calls: list[int] = []

    async def worker(task: Task, ctx: Context) -> Result:
        calls.append(task.n)
        if task.n == 0:
            raise ConnectionError("down")  # opens the breaker (one failure)
        return Result(n=task.n)

    app = App("test", registry=registry)
    app.agent(
        consumes=Task,
        publishes=Result,
        concurrency=1,
        retry=RetryPolicy(max_attempts=1),
        breaker=BreakerPolicy(failures=1, cooldown_s=0.05),
        hooks=[Exploding()],
    )(worker)
    async with TestBoard(app, partitions=1) as tb:
        for n in range(4):
            tb.publish(Task(n=n), partition_key="k")
        # n=1 takes the half-open trial, then the gate after the breaker raises: unless the
        # trial is given back, n=2 and n=3 wait for it for ever.
        await tb.run_until_idle(timeout=10)
        entries = {e.record.offset: e for e in DeadLetters(tb.board).entries()}
        assert sorted(entries) == [0, 1]
        assert "the gate broke" in entries[1].header("bb.dlq.exception.message")
        assert calls == [0, 2, 3]  # n=1's handler never ran
        assert sorted(a.payload.n for a in tb.artifacts(Result)) == [2, 3]
        breaker = tb.worker.runners[0]._breaker
        assert breaker is not None and breaker.state == "closed"
