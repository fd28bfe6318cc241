"""Dead-letter replay and purge (docs/DESIGN.md §5) on every backend."""

from __future__ import annotations

from collections import Counter

from agents.agent import App
from agents.context import Context
from agents.retry import RetryPolicy
from agents.worker import Worker
from blackboard.blackboard import Blackboard
from blackboard.deadletters import DeadLetterFilter, DeadLetters
from tests.contract.helpers import eventually
from tests.contract.test_processing import FAST, _results, _start
from tests.contract.types import Result, Task, registry

QUICK = RetryPolicy(max_attempts=2, backoff_ms=1, max_backoff_ms=5)


async def test_replay_runs_a_fixed_record_once_and_only_for_the_agent_that_gave_up(
    board: Blackboard,
) -> None:
    broken = True
    calls: Counter[str] = Counter()

    async def fragile(task: Task, ctx: Context) -> Result:
        calls[f"fragile{task.n}"] += 1
        if task.n == 3 and broken:
            raise RuntimeError("parser bug")
        return Result(n=task.n, by="fragile")

    async def sturdy(task: Task, ctx: Context) -> None:
        calls[f"sturdy{task.n}"] += 1

    app = App("test", registry=registry)
    app.add(fragile, consumes=Task, publishes=Result, retry=QUICK, breaker=None)
    app.add(sturdy, consumes=Task, retry=QUICK, breaker=None)
    worker = Worker(app, board, FAST)
    running = await _start(worker)
    board.publish_many([Task(n=i) for i in range(6)])
    dlq = DeadLetters(board)
    await eventually(lambda: len(dlq.entries()) == 1 and len(_results(board)) == 5, what="1 dead")
    [entry] = dlq.entries(DeadLetterFilter(agent="fragile", stage="process"))
    assert entry.attempt == 2 and entry.type == "test.Task"
    assert dlq.get(entry.artifact_id)[0].entry_id == entry.entry_id

    assert dlq.replay([entry], dry_run=True).replayed == [entry.entry_id]
    assert dlq.entries() == [entry]  # a dry run changes nothing
    broken = False
    report = dlq.replay(dlq.entries())
    assert report.replayed == [entry.entry_id]
    await eventually(lambda: len(_results(board)) == 6, what="the replayed record processed")
    assert dlq.entries() == []  # settled entries leave the listing
    assert dlq.replay(dlq.get(entry.entry_id)).skipped == [entry.entry_id]

    # Replaying the same dead letter again anyway (a crash before its disposition was noted)
    # must not process the artifact a second time.
    board.store.publish([dlq.replay_record(entry)])
    board.publish(Task(n=100))  # a marker after it: once it is processed, so is the replay
    await eventually(lambda: calls["fragile100"] == 1, what="the marker processed")
    worker.stop()
    await running
    assert sorted(r.n for r in _results(board)) == [0, 1, 2, 3, 4, 5, 100]
    assert calls["fragile3"] == 3  # two failed attempts, one replay
    assert calls["sturdy3"] == 1  # it processed the original; replays are not its business
    lag = board.lag([board.topics.group("fragile"), board.topics.group("sturdy")])
    assert sum(row.lag for row in lag) == 0


async def test_a_replay_that_fails_again_returns_with_its_history(board: Blackboard) -> None:
    async def hopeless(task: Task, ctx: Context) -> Result:
        raise RuntimeError("still broken")

    app = App("test", registry=registry)
    app.add(hopeless, consumes=Task, publishes=Result, retry=QUICK, breaker=None)
    worker = Worker(app, board, FAST)
    running = await _start(worker)
    board.publish(Task(n=1))
    dlq = DeadLetters(board)
    await eventually(lambda: len(dlq.entries()) == 1, what="dead letter")
    [first] = dlq.entries()
    dlq.replay([first])
    await eventually(lambda: len(dlq.entries()) == 1 and dlq.entries()[0] != first, what="again")
    worker.stop()
    await running
    [second] = dlq.entries()
    assert second.artifact_id == first.artifact_id
    assert second.attempt == 4  # 2 before the replay, 2 after
    assert second.replays == 1
    assert second.header("bb.dlq.first_failure_ts") == first.header("bb.dlq.first_failure_ts")
    assert second.header("bb.replay.of") == first.entry_id
    assert second.record.value == first.record.value and second.record.key == first.record.key
    assert [e.entry_id for e in dlq.entries(DeadLetterFilter(include_settled=True))] == [
        first.entry_id,
        second.entry_id,
    ]


async def test_purged_dead_letters_leave_the_listing_and_cannot_be_replayed(
    board: Blackboard,
) -> None:
    async def reject(task: Task, ctx: Context) -> Result:
        raise ValueError(f"bad task {task.n}")

    app = App("test", registry=registry)
    app.add(reject, consumes=Task, publishes=Result, retry=QUICK, breaker=None)
    worker = Worker(app, board, FAST)
    running = await _start(worker)
    board.publish_many([Task(n=i) for i in range(3)])
    dlq = DeadLetters(board)
    await eventually(lambda: len(dlq.entries()) == 3, what="3 dead letters")
    worker.stop()
    await running
    entries = dlq.entries()
    purged = dlq.purge(entries[:2])
    assert purged == [e.entry_id for e in entries[:2]]
    assert [e.entry_id for e in dlq.entries()] == [entries[2].entry_id]
    assert dlq.replay(dlq.get(entries[0].entry_id)).skipped == [entries[0].entry_id]
    assert dlq.purge(entries[:2]) == []  # already purged
