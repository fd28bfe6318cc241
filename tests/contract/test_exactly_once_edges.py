"""Exactly-once at its edges, on every backend: commits that fail while joins hold parts,
dead letters of records near the size limit, replays of records that still do not decode, and
replays that still fail while fresh records wait.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from agents.agent import App
from agents.breaker import BreakerPolicy
from agents.clock import ManualClock
from agents.collected import JoinSet
from agents.context import Context
from agents.retry import RetryPolicy
from agents.settings import RunnerSettings
from agents.worker import Worker
from blackboard.blackboard import Blackboard
from blackboard.deadletters import DeadLetterFilter, DeadLetters
from blackboard.errors import CommitError
from blackboard.records import OutgoingRecord
from tests.contract.helpers import eventually
from tests.contract.test_processing import FAST, _results, _start
from tests.contract.types import Doc, Result, Tally, Task, Vote, registry

ONCE = RetryPolicy(max_attempts=1)


def _flaky_commits(board: Blackboard, rate: float, seed: int) -> Counter[str]:
    """Make the members' commits and committed-offset reads take a moment (records finish
    meanwhile, as they do while a Kafka or Redis call is in flight) and the commits fail at
    ``rate`` before reaching the store: the runner then rewinds as after any refused commit.
    Returns the counts of failed and made commits."""
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    real_join = board.store.join

    async def join(*args: Any, **kwargs: Any) -> Any:
        member = await real_join(*args, **kwargs)
        real_commit = member.commit

        async def commit(commit: Any) -> None:
            await asyncio.sleep(0.003)
            if rng.random() < rate:
                counts["failed"] += 1
                raise CommitError("injected: the commit did not happen", retriable=True)
            await real_commit(commit)
            counts["made"] += 1

        real_committed = member.committed

        async def committed(partitions: Any) -> Any:
            await asyncio.sleep(0.02)  # a store slow to answer after a failure
            return await real_committed(partitions)

        member.commit = commit  # type: ignore[method-assign]
        member.committed = committed  # type: ignore[method-assign]
        return member

    board.store.join = join  # type: ignore[method-assign]
    return counts


async def test_failed_commits_while_joins_hold_parts_lose_no_part(board: Blackboard) -> None:
    """A join reads two topics whose partitions with one number share the keyed state. A
    commit that failed on one of them once reloaded that state while the other topic's
    finished, uncommitted parts and join markers were still to be committed: a part read
    again then started a new set that never completed (found here by the join timeout, which
    dead-letters a set held too long)."""
    pairs = 150

    async def tally(parts: JoinSet, ctx: Context) -> Tally:
        [doc] = parts[Doc]
        return Tally(n=doc.n, voters=[v.voter for v in parts[Vote]])

    app = App("test", registry=registry)
    app.join(
        consumes={Doc: 1, Vote: 1}, publishes=Tally, key=lambda p, env: str(p.n), timeout_s=60
    )(tally)
    counts = _flaky_commits(board, rate=0.3, seed=7)
    settings = RunnerSettings(commit_interval_ms=1, commit_every=1, idle_poll_s=0.05)
    clock = ManualClock()
    worker = Worker(app, board, settings, clock=clock)
    running = await _start(worker)
    n = 0
    # A key's two parts on the same partition of the two topics, apart in time: one is often
    # finished but not committed while the other's commit fails. At least `pairs` of them, and
    # on until commits failed often enough (a slow broker commits less often).
    while n < pairs or (counts["failed"] < 5 and n < 20 * pairs):
        board.publish(Doc(n=n), partition_key=str(n))
        await asyncio.sleep(0.006)
        board.publish(Vote(n=n, voter=f"v{n}"), partition_key=str(n))
        await asyncio.sleep(0.006)
        n += 1
    pairs = n

    def tallies() -> Counter[int]:
        return Counter(a.payload.n for a in board.read(Tally))  # type: ignore[attr-defined]

    dlq = DeadLetters(board)
    await eventually(lambda: len(tallies()) == pairs, timeout=90, what=f"{pairs} tallies")
    await eventually(lambda: sum(r.lag for r in board.lag()) == 0, what="drained")
    clock.advance(120)  # every set still held is now past its timeout: dead-lettered
    await asyncio.sleep(0.3)  # the runner checks its timers every 50 ms
    await eventually(lambda: sum(r.lag for r in board.lag()) == 0, what="timers committed")
    worker.stop()
    await running
    found = tallies()
    assert counts["failed"] >= 5 and counts["made"] >= 5, counts  # rewinds did happen
    assert sorted(found) == list(range(pairs)), f"missing {sorted(set(range(pairs)) - set(found))}"
    assert set(found.values()) == {1}, "a join fired twice"
    held = [e.summary() for e in dlq.entries()]
    assert not held, f"{len(held)} parts were held in sets that never completed: {held[:3]}"


async def test_dead_letter_of_a_record_near_the_size_limit_fits_and_work_goes_on(
    board: Blackboard,
) -> None:
    """The original plus the bb.dlq.* headers would be over the store's record limit: the
    dead letter is cut to fit (saying what was cut) instead of failing every commit."""

    async def double(task: Task, ctx: Context) -> Result:
        return Result(n=task.n * 2)

    app = App("test", registry=registry)
    app.add(double, consumes=Task, publishes=Result, retry=ONCE)
    worker = Worker(app, board, FAST)
    running = await _start(worker)
    board.publish_many([Task(n=i) for i in range(3)])
    limit = board.store.max_record_bytes
    value = b"\xfe" + b"x" * (limit - 500)  # fits alone; not JSON: stage deserialize
    topic = board.topic(Task)
    board.store.publish([OutgoingRecord(topic, b"big", value, (("bb.type", b"test.Task"),))])
    board.publish_many([Task(n=i) for i in range(3, 6)])
    dlq = DeadLetters(board)
    await eventually(lambda: len(_results(board)) == 6 and len(dlq.entries()) == 1, what="all")
    worker.stop()
    await running
    [entry] = dlq.entries()
    assert entry.stage == "deserialize"
    assert entry.header("bb.dlq.truncated") == "stacktrace,value"
    assert int(entry.header("bb.dlq.original.size")) > limit - 500
    assert entry.record.value == b"" and entry.record.key == b"big"
    assert entry.header("bb.dlq.original.topic") == topic
    assert dlq.replay_record(entry).value == value  # read back from the original topic
    assert sorted(r.n for r in _results(board)) == [0, 2, 4, 6, 8, 10]


async def test_replayed_undecodable_record_returns_once_with_its_history(
    board: Blackboard,
) -> None:
    """Two agents read the topic; a record that does not decode is dead-lettered by each.
    A replay of one agent's entry that still does not decode returns to the DLQ once (only
    that agent runs replays) with its attempts and first failure, and can be replayed again;
    a second copy of the same replay is skipped."""

    async def first(task: Task, ctx: Context) -> None:
        return None

    async def second(task: Task, ctx: Context) -> None:
        return None

    app = App("test", registry=registry)
    app.add(first, consumes=Task, retry=ONCE)
    app.add(second, consumes=Task, retry=ONCE)
    worker = Worker(app, board, FAST)
    running = await _start(worker)
    topic = board.topic(Task)
    board.store.publish([OutgoingRecord(topic, b"k", b"{not json", (("bb.type", b"test.Task"),))])
    dlq = DeadLetters(board)
    await eventually(lambda: len(dlq.entries()) == 2, what="a dead letter per agent")
    [original] = dlq.entries(DeadLetterFilter(agent="first"))
    assert original.attempt == 1

    def of_first() -> list[Any]:
        return dlq.entries(DeadLetterFilter(agent="first"))

    dlq.replay([original])
    await eventually(lambda: len(of_first()) == 1 and of_first()[0] != original, what="again")
    [again] = of_first()
    assert again.stage == "deserialize"
    assert again.attempt == 2 and again.replays == 1
    assert again.header("bb.dlq.first_failure_ts") == original.header("bb.dlq.first_failure_ts")
    assert again.header("bb.replay.of") == original.entry_id

    board.store.publish([dlq.replay_record(original)])  # a second copy of that replay: skipped
    dlq.replay([again])  # the new entry may be replayed, and fails once more
    await eventually(lambda: of_first() and of_first()[0].attempt == 3, what="a third failure")
    board.publish(Task(n=1))  # once both agents processed it, they read everything before it
    await eventually(
        lambda: sum(r.lag for r in board.lag()) == 0 and len(_lags(board)) == 2, what="drained"
    )
    worker.stop()
    await running
    every = dlq.entries(DeadLetterFilter(include_settled=True))
    assert Counter(e.agent for e in every) == {"first": 3, "second": 1}
    assert [e.attempt for e in every if e.agent == "first"] == [1, 2, 3]


def _lags(board: Blackboard) -> set[str]:
    return {row.group for row in board.lag()}


async def test_replays_that_still_fail_do_not_open_the_breaker_on_fresh_records(
    board: Blackboard,
) -> None:
    """Six replayed records that still fail, in a row, once opened the breaker (threshold
    four) and each half-open trial could pick another of them, doubling the cool-down while
    fresh records waited. A replayed record's failure says nothing of the agent's
    dependencies: it is not counted."""
    calls: Counter[str] = Counter()

    async def picky(task: Task, ctx: Context) -> Result | None:
        calls[task.text or "good"] += 1
        if task.text == "bad":
            raise RuntimeError("still broken")
        return Result(n=task.n)

    breaker = BreakerPolicy(failures=4, cooldown_s=30.0, max_cooldown_s=60.0)
    app = App("test", registry=registry)
    app.add(picky, consumes=Task, publishes=Result, retry=ONCE, breaker=breaker)
    worker = Worker(app, board, FAST)
    running = await _start(worker)
    dlq = DeadLetters(board)
    for i in range(6):  # one at a time, a good record between: never four failures in a row
        board.publish_many([Task(n=100 + i, text="bad"), Task(n=i)])
        await eventually(lambda i=i: len(dlq.entries()) == i + 1, what=f"dead letter {i + 1}")
    await eventually(lambda: len(_results(board)) == 6, what="the good ones")
    [runner] = worker.runners
    assert runner._breaker is not None and runner._breaker.opens == 0
    dlq.replay(dlq.entries())
    await eventually(lambda: calls["bad"] == 12, what="the six replays ran and failed")
    board.publish_many([Task(n=i) for i in range(6, 26)])
    await eventually(lambda: len(_results(board)) == 26, timeout=10, what="fresh records")
    worker.stop()
    await running
    assert runner._breaker.opens == 0
    assert len(dlq.entries()) == 6  # each replay back in the DLQ, once
