"""Store contract: the behaviour every backend must show (docs/DESIGN.md §3)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from blackboard.artifacts import make_envelope, output_id
from blackboard.blackboard import Blackboard
from blackboard.errors import (
    CommitError,
    FencedError,
    RecordTooLargeError,
    StoreClosedError,
    TopicError,
)
from blackboard.records import (
    AtomicCommit,
    CommittedOffset,
    OutgoingRecord,
    StateUpdate,
    TopicPartition,
    partition_for,
)
from blackboard.store import MAX_METADATA_CHARS
from blackboard.wire import decode
from tests.contract.helpers import Listener, eventually, poll_distinct, poll_until, settle
from tests.contract.types import Result, Task


def _all_tps(board: Blackboard, model: type) -> set[TopicPartition]:
    topic = board.topic(model)
    return {TopicPartition(topic, p) for p in range(board.settings.partitions)}


async def test_publish_and_read_back_keeps_every_envelope_field(board: Blackboard) -> None:
    task_type = board.registry.of(Task)
    env = make_envelope(
        task_type,
        artifact_id="a-1",
        correlation_id="corr-1",
        causation_ids=("c-1", "c-2"),
        partition_key="key-1",
        tenant="acme",
        produced_by="tester",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    )
    board.ensure_topics([task_type])
    board.store.publish([board.record_for(env, Task(n=1, text="héllo"))])
    published = board.publish(Task(n=2), correlation_id="corr-2", tenant="t2")

    found = {a.id: a for a in board.read(Task)}
    assert found["a-1"].envelope == env
    assert found["a-1"].payload == Task(n=1, text="héllo")
    second = found[published.id].envelope
    assert second == published
    assert second.partition_key == "corr-2"  # defaults to the correlation id
    assert second.produced_by == "external"


async def test_records_with_one_key_share_a_partition_in_order(board: Blackboard) -> None:
    keys = [f"k{i}" for i in range(5)]
    for round_ in range(4):
        for key in keys:
            board.publish(Task(n=round_), partition_key=key)
    topic = board.topic(Task)
    seen: dict[str, list[int]] = {}
    for p in range(board.settings.partitions):
        records = board.store.read(TopicPartition(topic, p), 0, 1000)
        assert [r.offset for r in records] == sorted(r.offset for r in records)
        for r in records:
            key = (r.key or b"").decode()
            assert r.partition == partition_for(r.key, board.settings.partitions)
            seen.setdefault(key, []).append(decode(r, board.registry).payload.n)  # type: ignore[attr-defined]
    assert seen == {key: [0, 1, 2, 3] for key in keys}


async def test_topics_keep_their_partition_count(board: Blackboard) -> None:
    topic = board.topic(Task)
    board.ensure_topics([board.registry.of(Task)])
    assert board.store.topic_partitions(topic) == 4
    with pytest.raises(TopicError, match="co-partitioned"):
        board.store.ensure_topics([topic], 3)


async def test_two_members_split_partitions_and_one_leaving_hands_over(board: Blackboard) -> None:
    board.ensure_topics([board.registry.of(Task)])
    topic, group = board.topic(Task), f"{board.settings.prefix}-g"
    all_tps = _all_tps(board, Task)
    first, second = Listener(), Listener()
    m1 = await board.store.join(group, [topic], first)
    await settle([m1], all_tps)
    m2 = await board.store.join(group, [topic], second)
    await settle([m1, m2], all_tps)
    assert m1.assignment().isdisjoint(m2.assignment())
    assert first.revoked, "the first member must give partitions up"

    for i in range(20):
        board.publish(Task(n=i), partition_key=f"key-{i}")
    await m2.close()
    # Raw polls are at-least-once: a rebalance may hand back records not yet committed.
    received = await poll_distinct(m1, 20)
    assert m1.assignment() == all_tps
    assert sorted(decode(r, board.registry).payload.n for r in received) == list(range(20))  # type: ignore[attr-defined]
    await m1.close()


async def test_atomic_commit_shows_nothing_when_it_fails(board: Blackboard) -> None:
    board.ensure_topics([board.registry.of(Task), board.registry.of(Result)])
    board.publish(Task(n=1), partition_key="k")
    group = f"{board.settings.prefix}-g"
    member = await board.store.join(group, [board.topic(Task)], Listener())
    [record] = await poll_until(member, 1)
    good = OutgoingRecord(board.topic(Result), b"k", b'{"n": 1}', ())
    too_big = OutgoingRecord(board.topic(Result), b"k", b"x" * 2_000_000, ())
    commit = AtomicCommit(
        outputs=[good, too_big],
        offsets={record.tp: CommittedOffset(record.offset + 1)},
        state=[StateUpdate(record.partition, "s", b"v")],
    )
    with pytest.raises((RecordTooLargeError, CommitError)):
        await member.commit(commit)
    assert list(board.records("test.Result")) == []
    assert board.store.group_offsets(group) == {}
    assert await member.load_state(record.partition) == {}

    await member.commit(
        AtomicCommit(
            outputs=[good],
            offsets={record.tp: CommittedOffset(record.offset + 1)},
            state=[StateUpdate(record.partition, "s", b"v")],
        )
    )
    await eventually(lambda: len(list(board.records("test.Result"))) == 1, what="the output")
    await eventually(lambda: record.tp in board.store.group_offsets(group), what="the offset")
    assert board.store.group_offsets(group)[record.tp].offset == record.offset + 1
    assert await member.load_state(record.partition) == {"s": b"v"}
    await member.close()


async def test_commit_over_a_limit_is_refused_alike_and_shows_nothing(board: Blackboard) -> None:
    """Every store refuses a record over its limit and offset metadata over
    ``MAX_METADATA_CHARS`` with the same error and code, and commits metadata of exactly that
    length."""
    board.ensure_topics([board.registry.of(Task), board.registry.of(Result)])
    board.publish(Task(n=1), partition_key="k")
    group = f"{board.settings.prefix}-g"
    member = await board.store.join(group, [board.topic(Task)], Listener())
    [record] = await poll_until(member, 1)
    good = OutgoingRecord(board.topic(Result), b"k", b'{"n": 1}', ())
    too_big = OutgoingRecord(board.topic(Result), b"k", b"x" * board.store.max_record_bytes, ())
    done = {record.tp: CommittedOffset(record.offset + 1)}
    with pytest.raises(RecordTooLargeError) as big:
        await member.commit(AtomicCommit(outputs=[good], dead_letters=[too_big], offsets=done))
    assert big.value.code == "MSG_SIZE_TOO_LARGE"
    longest = "x" * MAX_METADATA_CHARS
    over = {record.tp: CommittedOffset(record.offset + 1, longest + "x")}
    with pytest.raises(RecordTooLargeError) as metadata:
        await member.commit(AtomicCommit(outputs=[good], offsets=over))
    assert metadata.value.code == "OFFSET_METADATA_TOO_LARGE"
    assert board.store.group_offsets(group) == {}

    fits = CommittedOffset(record.offset + 1, longest)
    await member.commit(AtomicCommit(offsets={record.tp: fits}))
    await eventually(lambda: record.tp in board.store.group_offsets(group), what="the offset")
    assert board.store.group_offsets(group)[record.tp] == fits
    assert list(board.records("test.Result")) == []
    await member.close()


async def test_a_closed_member_cannot_commit(board: Blackboard) -> None:
    board.ensure_topics([board.registry.of(Task)])
    board.publish(Task(n=1), partition_key="k")
    group = f"{board.settings.prefix}-g"
    member = await board.store.join(group, [board.topic(Task)], Listener())
    [record] = await poll_until(member, 1)
    await member.close()
    with pytest.raises(StoreClosedError):
        await member.commit(AtomicCommit(offsets={record.tp: CommittedOffset(record.offset + 1)}))
    assert board.store.group_offsets(group) == {}


async def test_crash_before_commit_redelivers_and_rerun_publishes_nothing_new(
    board: Blackboard,
) -> None:
    board.ensure_topics([board.registry.of(Task), board.registry.of(Result)])
    for i in range(10):
        board.publish(Task(n=i), partition_key=f"k{i}")
    group = f"{board.settings.prefix}-g"
    result_type = board.registry.of(Result)

    def outputs_for(records: list) -> AtomicCommit:  # type: ignore[type-arg]
        commit = AtomicCommit()
        for r in sorted(records, key=lambda r: (r.partition, r.offset)):
            art = decode(r, board.registry)
            env = make_envelope(
                result_type,
                artifact_id=output_id("agent", [art.id], 0),
                correlation_id=art.envelope.correlation_id,
                causation_ids=[art.id],
                partition_key=art.envelope.partition_key,
                produced_by="agent",
            )
            commit.outputs.append(board.record_for(env, Result(n=art.payload.n)))  # type: ignore[attr-defined]
            commit.offsets[r.tp] = CommittedOffset(r.offset + 1)
        return commit

    crashed = await board.store.join(group, [board.topic(Task)], Listener())
    first_try = outputs_for(await poll_distinct(crashed, 10))
    await crashed.close()  # dies before committing
    assert list(board.records("test.Result")) == []

    rerun = await board.store.join(group, [board.topic(Task)], Listener())
    redelivered = await poll_distinct(rerun, 10)
    second_try = outputs_for(redelivered)
    await rerun.commit(second_try)
    # Kafka writes the commit markers just after commit_transaction returns: wait to see them.
    await eventually(lambda: len(list(board.read(Result))) >= 10, what="10 results")
    results = list(board.read(Result))
    assert len(results) == 10
    first_ids = sorted(dict(o.wire_headers())["bb.id"].decode() for o in first_try.outputs)
    assert sorted(a.id for a in results) == first_ids
    assert sorted(a.payload.n for a in results) == list(range(10))  # type: ignore[attr-defined]
    await rerun.close()


async def test_commit_for_a_partition_not_owned_is_fenced(board: Blackboard) -> None:
    board.ensure_topics([board.registry.of(Task)])
    topic, group = board.topic(Task), f"{board.settings.prefix}-g"
    m1 = await board.store.join(group, [topic], Listener())
    m2 = await board.store.join(group, [topic], Listener())
    await settle([m1, m2], _all_tps(board, Task))
    foreign = next(iter(m2.assignment()))
    with pytest.raises(FencedError):
        await m1.commit(AtomicCommit(offsets={foreign: CommittedOffset(0)}))
    await m1.close()
    await m2.close()


async def test_lag_is_end_minus_committed(board: Blackboard) -> None:
    for i in range(12):
        board.publish(Task(n=i), partition_key=f"key-{i}")
    topic, group = board.topic(Task), f"{board.settings.prefix}-g"
    member = await board.store.join(group, [topic], Listener())
    records = await poll_until(member, 12)
    done = [r for r in records if r.partition == records[0].partition][:1]
    await member.commit(AtomicCommit(offsets={done[0].tp: CommittedOffset(done[0].offset + 1)}))

    async def lag_seen() -> bool:
        return sum(r.lag for r in board.lag([group])) == 11

    await eventually(lag_seen, what="lag of 11")
    rows = {(r.topic, r.partition): r for r in board.lag([group])}
    ends = board.store.end_offsets([topic])
    assert len(rows) == board.settings.partitions
    for tp, end in ends.items():
        row = rows[(tp.topic, tp.partition)]
        assert row.end_offset == end
        expected_committed = done[0].offset + 1 if tp == done[0].tp else None
        assert row.committed_offset == expected_committed
        assert row.lag == end - (expected_committed or 0)
    await member.close()


def test_publish_many_with_a_partition_key_per_record(board: Blackboard) -> None:
    from blackboard.errors import ConfigError
    from blackboard.records import partition_for

    keys = [f"key-{i}" for i in range(12)]
    envelopes = board.publish_many([Task(n=i) for i in range(12)], partition_keys=keys)
    assert [e.partition_key for e in envelopes] == keys
    placed = {
        r.key: r.partition for r in board.records("test.Task")
    }  # each record on its own key's partition
    assert placed == {k.encode(): partition_for(k.encode(), 4) for k in keys}
    assert len(set(placed.values())) > 1
    with pytest.raises(ConfigError, match="partition_keys: 1 given for 2 payloads"):
        board.publish_many([Task(n=1), Task(n=2)], partition_keys=["only-one"])
    with pytest.raises(ConfigError, match="not both"):
        board.publish_many([Task(n=1)], partition_key="a", partition_keys=["b"])
