"""Joins and batches (issue: joins and batches) on every backend: sets complete across
rebalances, timeouts and batch windows on an injected clock, exactly-once firing after a crash."""

from __future__ import annotations

import asyncio
from collections import Counter

from agents.agent import App
from agents.clock import ManualClock
from agents.collected import Batch, JoinSet
from agents.context import Context
from agents.worker import Worker
from blackboard.blackboard import Blackboard
from scheduler.batching import BatchControl
from tests.contract.helpers import eventually
from tests.contract.test_processing import FAST, _crash, _start
from tests.contract.types import Doc, Result, Tally, Task, Vote, registry


def _tallies(board: Blackboard) -> list[Tally]:
    return [a.payload for a in board.read(Tally)]  # type: ignore[misc]


def _results(board: Blackboard) -> list[Result]:
    return [a.payload for a in board.read(Result)]  # type: ignore[misc]


def _idle(board: Blackboard) -> bool:
    """Every record on the topics the test's agents read is committed by them (a group that
    committed nothing yet has no rows, so every non-empty partition must have one)."""
    groups = [board.topics.group(agent) for agent in ("tally", "summer")]
    rows = board.lag(groups)
    topics = {board.topic(t) for t in (Doc, Vote, Task)}
    ends = board.store.end_offsets(sorted(t for t in topics if board.store.topic_partitions(t)))
    covered = {(r.topic, r.partition) for r in rows if r.committed_offset is not None}
    waiting = [tp for tp, end in ends.items() if end and (tp.topic, tp.partition) not in covered]
    return not waiting and sum(row.lag for row in rows) == 0


def _voting_app(*, timeout_s: float | None = None, with_on_timeout: bool = True) -> App:
    app = App("test", registry=registry)

    async def on_timeout(parts: JoinSet, ctx: Context) -> Tally:
        docs = parts[Doc]
        return Tally(n=docs[0].n if docs else -1, voters=[], complete=False)

    @app.join(
        consumes={Doc: 1, Vote: 2},
        publishes=Tally,
        timeout_s=timeout_s,
        on_timeout=on_timeout if with_on_timeout else None,
    )
    async def tally(parts: JoinSet, ctx: Context) -> Tally:
        assert parts.complete and len(parts) == 3
        assert {e.correlation_id for e in parts.envelopes} == {parts.key}
        return Tally(n=parts[Doc][0].n, voters=sorted(v.voter for v in parts[Vote]))

    return app


def _publish_doc(board: Blackboard, n: int) -> str:
    return board.publish(Doc(n=n)).correlation_id


def _publish_vote(board: Blackboard, n: int, corr: str, voter: str) -> None:
    board.publish(Vote(n=n, voter=voter), correlation_id=corr)


async def test_joins_complete_once_while_partitions_move_between_workers(
    board: Blackboard,
) -> None:
    app = _voting_app()
    first = Worker(app, board, FAST, slot="a")
    running_first = await _start(first)
    keys = {n: _publish_doc(board, n) for n in range(24)}
    for n, corr in keys.items():
        _publish_vote(board, n, corr, "alice")
    second = Worker(app, board, FAST, slot="b")
    running_second = await _start(second)  # partitions split, held halves move
    for n, corr in keys.items():
        _publish_vote(board, n, corr, "bob")
        if n == 12:
            first.stop()  # the rest moves to the second worker
            await running_first
    await eventually(lambda: len(_tallies(board)) >= 24, what="24 tallies")
    _publish_vote(board, 0, keys[0], "carol")  # an extra after the join fired: dropped
    board.publish(Doc(n=99))  # a marker behind it (a new, incomplete join)
    await eventually(lambda: _idle(board), what="all read")
    second.stop()
    await running_second
    tallies = _tallies(board)
    assert sorted(t.n for t in tallies) == list(range(24))
    assert all(t.voters == ["alice", "bob"] and t.complete for t in tallies)
    by_n = {a.payload.n: a.envelope for a in board.read(Tally)}  # type: ignore[attr-defined]
    assert len(by_n[3].causation_ids) == 3 and by_n[3].correlation_id == keys[3]


async def test_a_partial_join_times_out_to_on_timeout_or_the_dead_letters(
    board: Blackboard,
) -> None:
    clock = ManualClock()
    app = _voting_app(timeout_s=60)
    worker = Worker(app, board, FAST, clock=clock)
    running = await _start(worker)
    corr = _publish_doc(board, 1)
    _publish_vote(board, 1, corr, "alice")
    complete = _publish_doc(board, 2)
    _publish_vote(board, 2, complete, "alice")
    _publish_vote(board, 2, complete, "bob")
    await eventually(lambda: len(_tallies(board)) == 1, what="the complete join")
    await eventually(lambda: _idle(board), what="parts held")
    clock.advance(59)
    await asyncio.sleep(0.2)  # several timer checks: not yet
    assert len(_tallies(board)) == 1
    clock.advance(2)
    await eventually(lambda: len(_tallies(board)) == 2, what="the timed-out join")
    worker.stop()
    await running
    timed_out = next(t for t in _tallies(board) if not t.complete)
    assert timed_out.n == 1


async def test_a_timed_out_join_without_handler_dead_letters_its_parts(
    board: Blackboard,
) -> None:
    from blackboard.deadletters import DeadLetters

    clock = ManualClock()
    worker = Worker(_voting_app(timeout_s=5, with_on_timeout=False), board, FAST, clock=clock)
    running = await _start(worker)
    corr = _publish_doc(board, 7)
    _publish_vote(board, 7, corr, "alice")
    await eventually(lambda: _idle(board), what="parts held")
    clock.advance(6)
    dlq = DeadLetters(board)
    await eventually(lambda: len(dlq.entries()) == 2, what="2 dead letters")
    _publish_vote(board, 7, corr, "bob")  # too late: the key timed out, an extra
    await eventually(lambda: _idle(board), what="late vote read")
    worker.stop()
    await running
    assert _tallies(board) == []
    entries = dlq.entries()
    assert {e.stage for e in entries} == {"join"} and {e.type for e in entries} == {
        "test.Doc",
        "test.Vote",
    }
    assert "timed out after 5s" in entries[0].header("bb.dlq.exception.message")


def _batch_app(max_records: int = 5, max_wait_ms: float = 10_000) -> tuple[App, Counter[int]]:
    app = App("test", registry=registry)
    sizes: Counter[int] = Counter()

    @app.batch(consumes=Task, publishes=Result, max_records=max_records, max_wait_ms=max_wait_ms)
    async def summer(batch: Batch[Task], ctx: Context) -> Result:
        sizes[len(batch)] += 1
        return Result(n=sum(t.n for t in batch), by=",".join(str(t.n) for t in batch))

    return app, sizes


async def test_batches_fire_by_size_and_by_time(board: Blackboard) -> None:
    clock = ManualClock()
    app, sizes = _batch_app()
    worker = Worker(app, board, FAST, clock=clock)
    running = await _start(worker)
    board.publish_many([Task(n=i) for i in range(12)], partition_key="one")
    await eventually(lambda: len(_results(board)) == 2, what="two full batches")
    await eventually(lambda: _idle(board), what="the rest held")
    await asyncio.sleep(0.2)
    assert len(_results(board)) == 2  # the last two wait for the window
    clock.advance(11)
    await eventually(lambda: len(_results(board)) == 3, what="the window closed")
    worker.stop()
    await running
    assert sizes == Counter({5: 2, 2: 1})
    assert sorted(r.by for r in _results(board)) == ["0,1,2,3,4", "10,11", "5,6,7,8,9"]


async def test_crash_mid_join_and_mid_batch_fires_exactly_once(board: Blackboard) -> None:
    join_app = _voting_app()
    batch_app, _ = _batch_app(max_records=4)
    for name, spec in batch_app.agents.items():
        join_app.agents[name] = spec
    worker = Worker(join_app, board, FAST)
    running = await _start(worker)
    keys = {n: _publish_doc(board, n) for n in range(10)}
    for n, corr in keys.items():
        _publish_vote(board, n, corr, "alice")
    board.publish_many([Task(n=i) for i in range(6)], partition_key="one")
    await eventually(lambda: len(_results(board)) == 1, what="one batch of 4")
    await eventually(lambda: _idle(board), what="halves committed")
    await _crash(running)  # like kill -9: nothing after the last commit survives
    for n, corr in keys.items():
        _publish_vote(board, n, corr, "bob")
    board.publish_many([Task(n=i) for i in range(6, 8)], partition_key="one")
    restarted = Worker(join_app, board, FAST)
    running = await _start(restarted)
    await eventually(lambda: len(_tallies(board)) >= 10, what="10 tallies")
    await eventually(lambda: len(_results(board)) >= 2, what="the second batch")
    await eventually(lambda: _idle(board), what="all read")
    restarted.stop()
    await running
    assert sorted(t.n for t in _tallies(board)) == list(range(10))
    assert all(t.voters == ["alice", "bob"] for t in _tallies(board))
    assert sorted(r.by for r in _results(board)) == ["0,1,2,3", "4,5,6,7"]


def _two_type_batch_app(fired: list[str]) -> App:
    """``summer`` batches Tasks by 3 within 1 s and Docs by 2 within 5 s; each batch it gets
    is noted in ``fired`` as ``<type>:<ns>`` and published as a Result with the same ``by``."""
    app = App("test", registry=registry)

    @app.batch(
        consumes={Task: BatchControl(max_records=3, max_wait_ms=1000), Doc: BatchControl(2, 5000)},
        publishes=Result,
    )
    async def summer(batch: Batch[Task | Doc], ctx: Context) -> Result:
        assert {p.artifact.type for p in batch.parts} == {batch.type}  # one type per batch
        by = f"{batch.type}:{','.join(str(x.n) for x in batch)}"
        fired.append(by)
        return Result(n=sum(x.n for x in batch), by=by)

    return app


async def test_two_types_batch_apart_with_their_own_sizes_and_windows(board: Blackboard) -> None:
    clock = ManualClock()
    fired: list[str] = []
    app = _two_type_batch_app(fired)
    worker = Worker(app, board, FAST, clock=clock)
    running = await _start(worker)
    for i in range(7):  # interleaved on one partition (one batch key): each type apart
        board.publish(Task(n=i), partition_key="one")
        if i < 3:
            board.publish(Doc(n=10 + i), partition_key="one")
    full = {"test.Task:0,1,2", "test.Task:3,4,5", "test.Doc:10,11"}
    await eventually(lambda: {r.by for r in _results(board)} == full, what="the full batches")
    await eventually(lambda: _idle(board), what="Task 6 and Doc 12 held")
    await _crash(running)  # the held parts of both types survive in the committed state
    restarted = Worker(app, board, FAST, clock=clock)
    running = await _start(restarted)
    clock.advance(0.9)
    await asyncio.sleep(0.2)  # several timer checks: no window closed yet
    assert len(_results(board)) == 3
    clock.advance(0.2)  # Task's 1 s window closed, Doc's 5 s one has not
    await eventually(lambda: len(_results(board)) == 4, what="Task's window")
    await asyncio.sleep(0.2)
    assert {r.by for r in _results(board)} == full | {"test.Task:6"}
    clock.advance(4)
    await eventually(lambda: len(_results(board)) == 5, what="Doc's window")
    await eventually(lambda: _idle(board), what="all committed")
    restarted.stop()
    await running
    assert sorted(r.by for r in _results(board)) == sorted(full | {"test.Task:6", "test.Doc:12"})
    assert fired.count("test.Task:6") == fired.count("test.Doc:12") == 1


async def test_a_part_published_off_its_join_keys_partition_is_refused(
    board: Blackboard,
) -> None:
    from blackboard.deadletters import DeadLetters
    from blackboard.records import partition_for

    worker = Worker(_voting_app(), board, FAST)
    running = await _start(worker)
    corr = _publish_doc(board, 1)
    home = partition_for(corr.encode(), 4)
    stray = next(k for k in (f"k{i}" for i in range(100)) if partition_for(k.encode(), 4) != home)
    board.publish(Vote(n=1, voter="alice"), correlation_id=corr, partition_key=stray)
    dlq = DeadLetters(board)
    await eventually(lambda: len(dlq.entries()) == 1, what="the stray part refused")
    worker.stop()
    await running
    [entry] = dlq.entries()
    assert entry.stage == "join" and entry.type == "test.Vote"
    assert f"belongs to partition {home}" in entry.header("bb.dlq.exception.message")
