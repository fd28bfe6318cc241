"""Processing-loop contract (docs/DESIGN.md §4) on every backend: exactly-once effects through
crashes, out-of-order completion, rebalances, dead letters and clean stops."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from agents.agent import App
from agents.context import Context
from agents.settings import RunnerSettings
from agents.worker import Worker
from blackboard.artifacts import output_id
from blackboard.blackboard import Blackboard
from blackboard.errors import UndeclaredOutputError
from blackboard.records import OutgoingRecord, TopicPartition
from tests.contract.helpers import eventually
from tests.contract.types import Result, Task, registry

FAST = RunnerSettings(commit_interval_ms=5, idle_poll_s=0.05, shutdown_grace_s=5)
Handler = Callable[[Task, Context], Awaitable[Result | None]]


def _app(
    handler: Handler, *, name: str = "doubler", ordered: bool = False, concurrency: int = 64
) -> App:
    app = App("test", registry=registry)
    app.add(
        handler,
        consumes=Task,
        publishes=Result,
        name=name,
        ordered=ordered,
        concurrency=concurrency,
    )
    return app


def _results(board: Blackboard) -> list[Result]:
    return [a.payload for a in board.read(Result)]  # type: ignore[misc]


async def _start(worker: Worker) -> asyncio.Task[None]:
    task = asyncio.create_task(worker.run())
    await worker.started()
    return task


async def _crash(task: asyncio.Task[None]) -> None:
    """Stop a worker the way a killed process stops: no drain, no commit."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_every_input_produces_its_output_exactly_once(board: Blackboard) -> None:
    async def double(task: Task, ctx: Context) -> Result:
        return Result(n=task.n * 2)

    worker = Worker(_app(double), board, FAST)
    running = await _start(worker)
    board.publish_many([Task(n=i) for i in range(200)])
    await eventually(lambda: len(_results(board)) >= 200, what="200 results")
    worker.stop()
    await running
    assert sorted(r.n for r in _results(board)) == [i * 2 for i in range(200)]
    assert sum(row.lag for row in board.lag([board.topics.group("doubler")])) == 0


async def test_crash_before_commit_reruns_with_the_same_output_ids(board: Blackboard) -> None:
    gate = asyncio.Event()
    calls: Counter[str] = Counter()

    async def slow(task: Task, ctx: Context) -> Result:
        calls[ctx.envelope.id] += 1
        await gate.wait()
        return Result(n=task.n)

    envs = board.publish_many([Task(n=i) for i in range(20)])
    first = await _start(Worker(_app(slow), board, FAST))
    await eventually(lambda: len(calls) == 20, what="20 handlers started")
    await _crash(first)
    assert _results(board) == []

    gate.set()
    worker = Worker(_app(slow), board, FAST)
    second = await _start(worker)
    await eventually(lambda: len(_results(board)) >= 20, what="20 results")
    worker.stop()
    await second
    results = list(board.read(Result))
    assert len(results) == 20
    assert sorted(a.id for a in results) == sorted(output_id("doubler", [e.id], 0) for e in envs)
    assert all(count == 2 for count in calls.values()), calls


async def test_out_of_order_completion_is_never_redone_after_restart(board: Blackboard) -> None:
    release = asyncio.Event()
    calls: Counter[int] = Counter()

    async def handler(task: Task, ctx: Context) -> Result:
        calls[task.n] += 1
        if task.n == 1:
            await release.wait()
        return Result(n=task.n)

    board.publish_many([Task(n=i) for i in range(6)], partition_key="one-partition")
    tp = TopicPartition(board.topic(Task), board.records("test.Task").__next__().partition)
    first = await _start(Worker(_app(handler), board, FAST))

    def committed_past_zero() -> bool:
        done = board.store.group_offsets(board.topics.group("doubler")).get(tp)
        return done is not None and done.offset == 1 and done.metadata != ""

    await eventually(committed_past_zero, what="commit at the slow record with metadata")
    await eventually(lambda: len(_results(board)) == 5, what="the five fast results")
    assert sorted(r.n for r in _results(board)) == [0, 2, 3, 4, 5]
    await _crash(first)

    release.set()
    worker = Worker(_app(handler), board, FAST)
    second = await _start(worker)
    await eventually(lambda: len(_results(board)) == 6, what="the slow record's result")
    worker.stop()
    await second
    assert calls == Counter({0: 1, 1: 2, 2: 1, 3: 1, 4: 1, 5: 1})
    assert sorted(r.n for r in _results(board)) == list(range(6))
    assert board.store.group_offsets(board.topics.group("doubler"))[tp].offset == 6


async def test_two_workers_split_the_partitions_and_hand_over_on_stop(board: Blackboard) -> None:
    seen_by: dict[str, set[int]] = {}

    def handler_for(label: str) -> Handler:
        async def handle(task: Task, ctx: Context) -> Result:
            seen_by.setdefault(label, set()).add(ctx.record.partition)
            return Result(n=task.n, by=label)

        return handle

    w1 = Worker(_app(handler_for("w1")), board, FAST, slot="1")
    w2 = Worker(_app(handler_for("w2")), board, FAST, slot="2")
    t1, t2 = await _start(w1), await _start(w2)

    def split() -> bool:
        owned = [w.runners[0]._member.assignment() for w in (w1, w2)]  # type: ignore[union-attr]
        return all(owned) and sum(map(len, owned)) == 4

    await eventually(split, what="partitions split across two workers")
    board.publish_many([Task(n=i) for i in range(100)])
    await eventually(lambda: len(_results(board)) >= 100, what="100 results")
    assert seen_by["w1"].isdisjoint(seen_by["w2"])

    w1.stop()
    await t1
    board.publish_many([Task(n=i) for i in range(100, 200)])
    await eventually(lambda: len(_results(board)) >= 200, what="200 results")
    w2.stop()
    await t2
    results = _results(board)
    assert sorted(r.n for r in results) == list(range(200))
    assert {r.by for r in results if r.n >= 100} == {"w2"}


async def test_stop_lets_in_flight_handlers_finish_and_commits_them(board: Blackboard) -> None:
    started: set[int] = set()

    async def slow(task: Task, ctx: Context) -> Result:
        started.add(task.n)
        await asyncio.sleep(0.5)
        return Result(n=task.n)

    worker = Worker(_app(slow), board, FAST)
    running = await _start(worker)
    board.publish_many([Task(n=i) for i in range(10)])
    await eventually(lambda: len(started) == 10, what="all 10 handlers running")
    worker.stop()  # every handler is mid-sleep: all 10 are in flight
    await running
    await eventually(lambda: len(_results(board)) >= 10, what="in-flight results committed")
    assert sorted(r.n for r in _results(board)) == list(range(10))
    assert sum(row.lag for row in board.lag([board.topics.group("doubler")])) == 0


async def test_records_of_one_key_run_in_order_when_asked(board: Blackboard) -> None:
    order: list[int] = []
    running_now: set[str] = set()
    overlaps: list[str] = []

    async def handle(task: Task, ctx: Context) -> Result:
        key = ctx.envelope.partition_key
        if key in running_now:
            overlaps.append(key)
        running_now.add(key)
        await asyncio.sleep(0.001 * (5 - task.n % 5))
        running_now.discard(key)
        if key == "a":
            order.append(task.n)
        return Result(n=task.n)

    worker = Worker(_app(handle, ordered=True), board, FAST)
    running = await _start(worker)
    for i in range(30):
        board.publish(Task(n=i), partition_key="a" if i % 2 == 0 else "b")
    await eventually(lambda: len(_results(board)) >= 30, what="30 results")
    worker.stop()
    await running
    assert overlaps == []
    assert order == list(range(0, 30, 2))


async def test_poison_records_go_to_the_dead_letter_topic_with_their_reasons(
    board: Blackboard,
) -> None:
    async def handle(task: Task, ctx: Context) -> Result:
        if task.n == 3:
            raise RuntimeError("model refused")
        if task.n == 4:
            ctx.publish(Task(n=99))  # not declared
        return Result(n=task.n)

    worker = Worker(_app(handle), board, FAST)
    running = await _start(worker)
    topic = board.topic(Task)
    bad_json = OutgoingRecord(
        topic, b"k1", b"{not json", (("bb.id", b"bad-1"), ("bb.type", b"test.Task"))
    )
    invalid = OutgoingRecord(
        topic, b"k2", b'{"n": "three"}', (("bb.id", b"bad-2"), ("bb.type", b"test.Task"))
    )
    board.store.publish([bad_json, invalid])
    board.publish_many([Task(n=i) for i in range(6)])
    dlq = board.topics.dlq(topic)

    def dead() -> list:  # type: ignore[type-arg]
        return [r for p in range(4) for r in board.store.read(TopicPartition(dlq, p), 0, 100)]

    await eventually(lambda: len(dead()) == 4 and len(_results(board)) == 4, what="4 dead letters")
    worker.stop()
    await running
    by_id = {dict(r.headers)["bb.id"].decode(): r for r in dead()}
    stages = {i: dict(r.headers)["bb.dlq.stage"].decode() for i, r in by_id.items()}
    assert stages["bad-1"] == "deserialize"
    assert stages["bad-2"] == "validate"
    assert sorted(stages.values()) == ["deserialize", "process", "process", "validate"]
    original = by_id["bad-1"]
    assert original.key == b"k1" and original.value == b"{not json"
    assert original.headers[:2] == bad_json.headers
    headers = {k: v.decode() for k, v in original.headers}
    assert headers["bb.dlq.original.topic"] == topic
    assert headers["bb.dlq.consumer.group"] == board.topics.group("doubler")
    assert headers["bb.dlq.agent"] == "doubler"
    assert int(headers["bb.dlq.original.offset"]) >= 0
    classes = {dict(r.headers)["bb.dlq.exception.class"].decode() for r in dead()}
    assert f"{UndeclaredOutputError.__module__}.UndeclaredOutputError" in classes
    assert "builtins.RuntimeError" in classes
    assert sum(row.lag for row in board.lag([board.topics.group("doubler")])) == 0


async def test_rebalance_while_an_ordered_agent_has_queued_records_loses_nothing(
    board: Blackboard,
) -> None:
    async def slow(task: Task, ctx: Context) -> Result:
        await asyncio.sleep(0.003)
        return Result(n=task.n, by=ctx.envelope.partition_key)

    keys = [f"key{i}" for i in range(6)]
    for i in range(300):  # many records per key: most wait parked behind their key
        board.publish(Task(n=i), partition_key=keys[i % len(keys)])
    w1 = Worker(_app(slow, ordered=True, concurrency=2), board, FAST, slot="1")
    t1 = await _start(w1)
    await eventually(lambda: len(_results(board)) >= 20, what="first results")
    w2 = Worker(_app(slow, ordered=True, concurrency=2), board, FAST, slot="2")
    t2 = await _start(w2)  # takes partitions away while w1 has records queued for them
    await eventually(lambda: len(_results(board)) >= 60, what="results from both workers")
    w2.stop()  # ...and hands them back: w1 must run their keys again
    await t2
    await eventually(lambda: len(_results(board)) >= 300, timeout=60, what="300 results")
    w1.stop()
    await t1
    results = _results(board)
    assert sorted(r.n for r in results) == list(range(300))
    for key in keys:
        seq = [r.n for r in results if r.by == key]
        assert seq == sorted(seq), f"order of {key} broken"
