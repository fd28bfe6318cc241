"""The runner's parts on their own: one commit from what finished (agents/work.py) and the
buffer, pauses and seeks of flow control (agents/flow.py). The contract suite runs them inside
the runner on every store; these pin their rules down directly."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agents.flow import FlowControl
from agents.work import Item, Outcome, plan_commit
from blackboard.offsets import PartitionProgress, decode_finished
from blackboard.records import OutgoingRecord, Record, StateUpdate, TopicPartition

A0, A1 = TopicPartition("bb.A", 0), TopicPartition("bb.A", 1)


def _record(tp: TopicPartition, offset: int) -> Record:
    return Record(tp.topic, tp.partition, offset, b"k", b"{}", (), 0.0)


def _out(n: int) -> OutgoingRecord:
    return OutgoingRecord("bb.B", b"k", str(n).encode())


def _read(progress: dict[TopicPartition, PartitionProgress], tp: TopicPartition, n: int) -> None:
    for offset in range(n):
        assert progress[tp].start(offset)


def test_a_commit_takes_what_finished_at_its_epoch_and_the_lowest_unfinished_offset() -> None:
    progress = {A0: PartitionProgress(0), A1: PartitionProgress(0)}
    _read(progress, A0, 4)
    _read(progress, A1, 1)
    epochs = {A0: 2, A1: 1}
    done = [
        Outcome(Item(_record(A0, 0), A0, 2), [_out(0)]),
        Outcome(Item(_record(A0, 2), A0, 2), [_out(2)], state=[StateUpdate(0, "s", b"1")]),
        Outcome(Item(_record(A0, 3), A0, 2), dead_letter=_out(3)),
        Outcome(Item(_record(A1, 0), A1, 0), [_out(9)]),  # read before A1 was rewound
    ]
    plan = plan_commit(done, epochs, progress)
    assert [o.value for o in plan.commit.outputs] == [b"0", b"2"]
    assert [d.value for d in plan.commit.dead_letters] == [b"3"]
    assert plan.commit.state == [StateUpdate(0, "s", b"1")]
    assert (plan.processed, plan.dead, plan.touched) == (2, 1, {A0})
    committed = plan.commit.offsets[A0]
    assert committed.offset == 1  # offset 1 is still running
    assert decode_finished(committed.offset, committed.metadata) == {2, 3}
    assert A1 not in plan.commit.offsets


def test_a_timer_commits_only_while_its_partitions_keep_their_epochs() -> None:
    progress = {A0: PartitionProgress(5)}
    timer = Outcome(None, [_out(1)], dead_letters=[_out(2)], epochs={A0: 3})
    fenced = plan_commit([timer], {A0: 4}, progress)
    assert not fenced.commit and not fenced.touched
    fired = plan_commit([timer], {A0: 3}, progress)
    assert len(fired.commit.outputs) == 1 and fired.dead == 1
    assert fired.commit.offsets[A0].offset == 5  # the offsets fence a zombie's timer too


class RecordingMember:
    """What flow control tells a group member (the calls, in order)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.calls.append(("seek", (tp, offset)))

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self.calls.append(("pause", frozenset(partitions)))

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self.calls.append(("resume", frozenset(partitions)))


def test_a_full_buffer_stops_reading_pauses_after_a_while_and_resumes_at_half() -> None:
    flow = FlowControl(max_buffered=4, max_offset_window=100, full_for_s=1.0)
    progress = {A0: PartitionProgress(0), A1: PartitionProgress(0)}
    _read(progress, A0, 4)
    assert flow.room(progress) == 0
    flow.update(progress, circuit_closed=True, now=10.0)
    assert not flow.paused  # full, but only for a moment: polls stop, partitions stay
    flow.update(progress, circuit_closed=True, now=11.0)
    assert flow.paused == {A0, A1} and flow.all_paused(progress)
    progress[A0].finish(0)
    progress[A0].finish(1)
    flow.update(progress, circuit_closed=True, now=11.5)
    assert flow.paused == {A0, A1}  # half full is not drained yet
    progress[A0].finish(2)
    flow.update(progress, circuit_closed=True, now=11.6)
    assert not flow.paused and flow.room(progress) == 3  # below half: reading again
    flow.update(progress, circuit_closed=False, now=12.0)
    assert flow.paused == {A0, A1}  # an open circuit fetches nothing


def test_a_partition_far_ahead_of_its_lowest_unfinished_offset_pauses() -> None:
    flow = FlowControl(max_buffered=1000, max_offset_window=10, full_for_s=1.0)
    progress = {A0: PartitionProgress(0), A1: PartitionProgress(0)}
    _read(progress, A0, 10)
    _read(progress, A1, 3)
    flow.check_windows([A0, A1], progress)
    assert flow.paused == {A0}
    for offset in range(10):
        progress[A0].finish(offset)
    progress[A0].position()
    flow.resume_drained(progress)
    assert not flow.paused


def test_seeks_and_pauses_reach_the_member_between_polls_and_stale_records_are_dropped() -> None:
    flow = FlowControl(max_buffered=10, max_offset_window=10, full_for_s=1.0)
    member = RecordingMember()
    flow.seek(A0, 7)
    flow.paused.add(A1)
    polled = [_record(A0, 9), _record(A1, 0)]
    assert flow.fresh(polled) == [polled[1]]  # A0 rewinds: what the poll read is stale
    flow.apply(member)  # type: ignore[arg-type]
    assert member.calls == [("seek", (A0, 7)), ("pause", frozenset({A1}))]
    assert flow.fresh(polled) == polled
    flow.paused.clear()
    flow.apply(member)  # type: ignore[arg-type]
    assert member.calls[-1] == ("resume", frozenset({A1}))
    flow.paused.add(A0)
    flow.forget(A0)  # revoked: nothing about it is kept
    flow.apply(member)  # type: ignore[arg-type]
    assert len(member.calls) == 3


def test_a_handler_that_outlived_its_partitions_epoch_leaves_the_state_view_alone() -> None:
    """A handler still running when its partition was revoked or rewound: its outcome is
    dropped at commit, and its state writes must not reach the view later records read (nor
    recreate the view of a partition that is gone, which would hide the stored state)."""
    from agents.context import KeyedState
    from agents.partitions import Partitions

    book = Partitions()
    tp = TopicPartition("bb.parts.Count", 0)
    book.epoch[tp] = 2
    book.state[0] = {"total": b"5"}
    writes = KeyedState(book.state[0])
    writes.set("total", b"6")
    stale = Outcome(Item(_record(tp, 3), tp, 1))
    book.keep_writes(writes, 0, stale)
    assert book.state[0] == {"total": b"5"}
    assert stale.state is not None  # still in its outcome, which the commit drops
    current = Outcome(Item(_record(tp, 4), tp, 2))
    book.keep_writes(writes, 0, current)
    assert book.state[0] == {"total": b"6"}
    del book.state[0]  # revoked
    book.keep_writes(writes, 0, Outcome(Item(_record(tp, 5), tp, 2)))
    assert 0 not in book.state


# -- the attempt path, the intake and the slots, each on its own -----------------------------


def _parts_app() -> tuple[Any, Any, Any]:
    from pydantic import BaseModel

    from agents.agent import App
    from blackboard.artifacts import TypeRegistry, artifact

    reg = TypeRegistry()

    @artifact("parts.In", registry=reg)
    class In(BaseModel):
        n: int

    @artifact("parts.Out", registry=reg)
    class Out(BaseModel):
        n: int

    return App("parts", registry=reg), In, Out


def _attempts(spec: Any, board: Any, book: Any, stats: Any, hooks: Any = ()) -> Any:
    import time

    from agents.attempt import Attempts
    from agents.hooks import Hooks
    from blackboard.logs import get_logger

    async def pause(seconds: float) -> None:
        return None

    async def lend(wait: Any) -> Any:
        return await wait()

    return Attempts(
        spec, board, "bb.parts", Hooks(list(hooks)), book, stats, 1_000_000,
        time.monotonic, lambda: False, pause, lend, get_logger("test"),
    )  # fmt: skip


async def test_the_attempt_path_alone_retries_a_call_and_finishes_it() -> None:
    from agents.attempt import Call
    from agents.partitions import Partitions
    from agents.retry import RetryPolicy
    from agents.work import RunnerStats
    from blackboard.blackboard import Blackboard

    app, In, Out = _parts_app()
    tries: list[int] = []

    async def handler(payload: Any, ctx: Any) -> Any:
        tries.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("once")
        return Out(n=payload.n + 1)

    app.add(handler, consumes=In, publishes=Out, retry=RetryPolicy(max_attempts=3, backoff_ms=0))
    spec = app.agents["handler"]
    with Blackboard("memory://", registry=app.registry) as board:
        book, stats = Partitions(), RunnerStats()
        tp = TopicPartition(board.topic(In), 0)
        book.track(tp, None)
        rec = _record(tp, 0)
        env = board.publish(In(n=1))  # any envelope of the type
        item = Item(rec, tp, book.epoch[tp])
        call = Call(rec, env, None, None, (rec,), item, handler=handler, payload=In(n=1))
        outcome = await _attempts(spec, board, book, stats).run(call)
        assert tries == [1, 2] and stats.retries == 1
        assert outcome is not None and outcome.item is item and outcome.dead_letter is None
        assert [r.topic for r in outcome.outputs] == [board.topic(Out)]
        book.bump(tp)  # the partition moved on: the next call is left unfinished
        stale = Call(rec, env, None, None, (rec,), item, handler=handler, payload=In(n=1))
        assert await _attempts(spec, board, book, stats).run(stale) is None


def test_the_intake_alone_dead_letters_what_does_not_decode_and_queues_the_rest() -> None:
    from agents.flow import FlowControl
    from agents.intake import Intake
    from agents.partitions import Partitions
    from agents.work import RunnerStats
    from blackboard.blackboard import Blackboard
    from blackboard.dlq import dead_letter
    from scheduler.fifo import PlainFifoQueue
    from scheduler.ledger import NullLedger

    app, In, _ = _parts_app()

    async def handler(payload: Any, ctx: Any) -> None:
        return None

    app.add(handler, consumes=In)
    spec = app.agents["handler"]
    with Blackboard("memory://", registry=app.registry) as board:
        board.publish(In(n=7))
        tp = TopicPartition(board.topic(In), 0)
        good = next(
            r
            for p in range(board.settings.partitions)
            for r in board.store.read(TopicPartition(tp.topic, p), 0, 10)
        )
        tp = TopicPartition(good.topic, good.partition)
        bad = Record(tp.topic, tp.partition, good.offset + 1, b"k", b"not json", (), 0.0)
        book, finished = Partitions(), []
        book.track(tp, None)
        ready: PlainFifoQueue[Item] = PlainFifoQueue("handler", NullLedger())
        intake = Intake(
            spec, board, {tp.topic: "parts.In"}, book, ready, FlowControl(100, 100, 1.0),
            RunnerStats(), finished.append,
            lambda rec, stage, exc, **kw: dead_letter(
                rec, stage=stage, error=exc, group="g", agent="handler", **kw
            ),
            lambda: 0.0,
        )  # fmt: skip
        intake.admit([good, bad])
        assert [i.record.offset for i in ready] == [good.offset]
        [rejected] = finished
        assert rejected.dead_letter is not None and rejected.item is not None
        assert dict(rejected.dead_letter.wire_headers())["bb.dlq.stage"] == b"deserialize"


def test_a_replay_dead_lettered_again_commits_its_settled_marker() -> None:
    """The replay is noted as settled in the partition's state with the offset, dead letter or
    not: otherwise another copy of it, read after a restart, would be dead-lettered twice."""
    progress = {A0: PartitionProgress(0)}
    _read(progress, A0, 1)
    marker = StateUpdate(0, "bb.replayed:entry-1", b"1")
    again = Outcome(Item(_record(A0, 0), A0, 1), dead_letter=_out(0), state=[marker])
    plan = plan_commit([again], {A0: 1}, progress)
    assert plan.commit.dead_letters == [_out(0)] and plan.commit.state == [marker]
    assert plan.dead == 1 and plan.processed == 0
