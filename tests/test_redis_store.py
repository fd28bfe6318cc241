"""Redis-specific behaviour of the ``redis://`` store, on real redis-servers (the shared contract
is in ``tests/contract``): fencing of a member whose session ran out, claiming and delivery
counts, rewinds, trimming, lag, out-of-memory, settings and start-up checks."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from blackboard.errors import (
    CommitError,
    ConfigError,
    FencedError,
    StoreError,
    StoreUnavailableError,
    SupersededError,
)
from blackboard.records import AtomicCommit, CommittedOffset, OutgoingRecord, TopicPartition
from blackboard.stores import open_store
from blackboard.stores.redis.member import RedisMember
from blackboard.stores.redis.settings import RedisSettings
from blackboard.stores.redis.store import RedisLagRow, RedisStore
from compose.redis_local import RedisLocal, RedisLocalError
from tests.contract.helpers import Listener, eventually, poll_distinct, poll_until, settle
from tests.services import unique_name

pytestmark = pytest.mark.redis

CLI = [sys.executable, "-m", "blackboard.shell.cli.main"]
ENV = {**os.environ, "BLACKBOARD_URL": ""}
#: Sessions long enough that no heartbeat lands during a test unless it waits for one.
QUIET = "session_timeout_ms=60000&heartbeat_interval_ms=20000"


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    opened = open_store(f"{redis_url}?{QUIET}")
    assert isinstance(opened, RedisStore)
    yield opened
    opened.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisLocal]:
    """A redis-server of the test's own, for settings that would disturb other tests."""
    server = RedisLocal(data_dir=tmp_path / "redis", appendonly=False, die_with_parent=True)
    try:
        server.start()
    except RedisLocalError as exc:
        pytest.skip(f"no private redis-server: {exc}")
    yield server
    server.stop()


def _topic(store: RedisStore, partitions: int = 1) -> str:
    topic = unique_name("t")
    store.create_topics([topic], partitions)
    return topic


def _publish(store: RedisStore, topic: str, count: int, partition: int | None = None) -> None:
    store.publish(
        [
            OutgoingRecord(topic, f"k{i}".encode(), f"v{i}".encode(), partition=partition)
            for i in range(count)
        ]
    )


async def test_offsets_are_dense_entry_ids(store: RedisStore, raw: redis.Redis) -> None:
    topic = _topic(store)
    positions = store.publish([OutgoingRecord(topic, b"k", b"v", (("h", b"1"), ("h", b"2")))] * 3)
    assert [offset for _, offset in positions] == [0, 1, 2]
    ids = [i for i, _ in raw.xrange(store.keys.stream(TopicPartition(topic, 0)))]
    assert ids == [b"0-1", b"0-2", b"0-3"]
    [record] = store.read(TopicPartition(topic, 0), 2, 10)
    assert (record.offset, record.key, record.value) == (2, b"k", b"v")
    assert record.headers == (("h", b"1"), ("h", b"2"))  # order and repeats kept


async def test_member_whose_session_ran_out_can_neither_commit_nor_read(
    store: RedisStore, raw: redis.Redis
) -> None:
    topic, out = _topic(store, 2), _topic(store, 2)
    _publish(store, topic, 10)
    group = unique_name("g")
    zombie_listener = Listener()
    zombie = await store.join(group, [topic], zombie_listener, member_name="a")
    read = await poll_until(zombie, 10)
    # The zombie stops heartbeating (a paused process): as Redis sees it, its session ran out.
    raw.zadd(store.keys.group(group).members, {"a": 0})
    other = await store.join(group, [topic], Listener(), member_name="b")
    redelivered = await poll_distinct(other, 10)  # taken over, pending entries claimed
    assert sorted((r.partition, r.offset) for r in redelivered) == sorted(
        (r.partition, r.offset) for r in read
    )
    assert isinstance(other, RedisMember)
    assert {other.attempt(r) for r in redelivered} == {2}  # delivered to the zombie first

    tp = read[0].tp
    late = AtomicCommit(
        outputs=[OutgoingRecord(out, b"k", b"from the zombie")],
        offsets={tp: CommittedOffset(max(r.offset for r in read if r.tp == tp) + 1)},
    )
    with pytest.raises(FencedError):
        await zombie.commit(late)
    assert store.end_offsets([out]) == {TopicPartition(out, 0): 0, TopicPartition(out, 1): 0}
    assert store.group_offsets(group) == {}

    _publish(store, topic, 2, partition=0)
    _publish(store, topic, 2, partition=1)
    # A read made before the zombie learns of the takeover (right after waking) is refused by
    # the lease check inside the read script, so it moves no entry out of the new owner's way.
    assert isinstance(zombie, RedisMember)
    assert await zombie._read(10) == []
    assert await zombie.poll(10, 0.2) == []
    assert sorted(zombie_listener.lost) == sorted({r.tp for r in read})
    assert len(await poll_distinct(other, 4)) == 4
    await zombie.close()
    await other.close()


async def test_seek_reads_pending_entries_again_from_the_offset(store: RedisStore) -> None:
    topic = _topic(store)
    _publish(store, topic, 6)
    member = await store.join(unique_name("g"), [topic], Listener())
    assert isinstance(member, RedisMember)
    first = await poll_until(member, 6)
    tp = first[0].tp
    await member.commit(AtomicCommit(offsets={tp: CommittedOffset(2)}))
    member.seek(tp, 2)  # as the runner does after a failed commit
    again = await poll_until(member, 4)
    assert [r.offset for r in again] == [2, 3, 4, 5]
    assert [member.attempt(r) for r in again] == [2, 2, 2, 2]
    assert await member.poll(10, 0.1) == []
    await member.close()


async def test_a_second_process_on_a_slot_supersedes_the_first(store: RedisStore) -> None:
    topic = _topic(store, 2)
    group = unique_name("g")
    older = await store.join(group, [topic], Listener(), member_name="w")
    await settle([older], {TopicPartition(topic, 0), TopicPartition(topic, 1)})
    newer = await store.join(group, [topic], Listener(), member_name="w")
    await settle([newer], {TopicPartition(topic, 0), TopicPartition(topic, 1)})
    with pytest.raises(SupersededError):
        await older.commit(AtomicCommit(offsets={TopicPartition(topic, 0): CommittedOffset(0)}))
    await newer.commit(AtomicCommit(offsets={TopicPartition(topic, 0): CommittedOffset(0)}))
    await older.close()
    await newer.close()


async def test_trim_keeps_everything_some_group_has_not_committed(
    store: RedisStore, redis_url: str
) -> None:
    topic = _topic(store)
    tp = TopicPartition(topic, 0)
    _publish(store, topic, 10)
    assert store.trim([topic]) == 0  # no group reads it: nothing is known to be read
    members = {}
    for name, committed in (("g1", 6), ("g2", 4)):
        group = unique_name(name)
        members[group] = await store.join(group, [topic], Listener())
        await poll_until(members[group], 10)
        await members[group].commit(AtomicCommit(offsets={tp: CommittedOffset(committed)}))
    assert store.trim([topic]) == 4  # below the lowest committed offset
    assert [r.offset for r in store.read(tp, 0, 100)] == list(range(4, 10))

    late = unique_name("g3")
    members[late] = await store.join(late, [topic], Listener())  # reads, commits nothing yet
    assert [r.offset for r in await poll_until(members[late], 6)] == list(range(4, 10))
    for member in members.values():
        if member.group != late:
            await member.commit(AtomicCommit(offsets={tp: CommittedOffset(10)}))
    assert store.trim([topic]) == 0
    await members[late].commit(AtomicCommit(offsets={tp: CommittedOffset(8)}))
    assert store.trim([topic]) == 4
    assert [r.offset for r in store.read(tp, 0, 100)] == [8, 9]
    assert store.end_offsets([topic]) == {tp: 10}  # offsets stay where they were

    # A member can trim what it owns on its own (trim_interval_s).
    await members[late].close()
    auto = open_store(
        f"{redis_url}?session_timeout_ms=1000&heartbeat_interval_ms=100&trim_interval_s=0.1"
    )
    member = await auto.join(late, [topic], Listener())
    assert [r.offset for r in await poll_until(member, 2)] == [8, 9]
    await member.commit(AtomicCommit(offsets={tp: CommittedOffset(10)}))
    await eventually(lambda: store.read(tp, 0, 100) == [], what="the stream trimmed")
    await member.close()
    for m in members.values():
        await m.close()
    auto.close()


async def test_lag_adds_the_redis_groups_delivered_and_pending_counts(store: RedisStore) -> None:
    topic = _topic(store)
    tp = TopicPartition(topic, 0)
    _publish(store, topic, 10)
    group = unique_name("g")
    member = await store.join(group, [topic], Listener())
    await poll_until(member, 7)
    await member.commit(AtomicCommit(offsets={tp: CommittedOffset(3)}))
    [row] = store.lag([group])
    assert row == RedisLagRow(group, topic, 0, 10, 3, 7, delivered=7, pending=4)

    cli = [*CLI, "lag", "--store", store.url, "--group", group, "--json"]
    out = await asyncio.to_thread(
        subprocess.run, cli, capture_output=True, text=True, timeout=60, env=ENV
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["lag"] == [
        {
            "group": group,
            "topic": topic,
            "partition": 0,
            "end_offset": 10,
            "committed_offset": 3,
            "lag": 7,
            "delivered": 7,
            "pending": 4,
        }
    ]
    await member.close()


async def test_out_of_memory_fails_the_commit_and_acknowledges_nothing(
    private_redis: RedisLocal,
) -> None:
    store = open_store(private_redis.url)
    assert isinstance(store, RedisStore)
    client = redis.Redis.from_url(private_redis.url)
    topic, out = _topic(store), _topic(store)
    tp = TopicPartition(topic, 0)
    _publish(store, topic, 5)
    group = unique_name("g")
    member = await store.join(group, [topic], Listener())
    await poll_until(member, 5)
    await member.commit(AtomicCommit(offsets={tp: CommittedOffset(5)}))
    _publish(store, topic, 5)
    commit = AtomicCommit(
        outputs=[OutgoingRecord(out, b"k", b"result")], offsets={tp: CommittedOffset(10)}
    )
    client.config_set("maxmemory", 1)
    try:
        assert len(await poll_until(member, 5)) == 5  # reading goes on
        with pytest.raises(CommitError, match="out of memory") as failed:
            await member.commit(commit)
        assert failed.value.code == "OOM"
        with pytest.raises(StoreError, match="out of memory"):
            _publish(store, topic, 1)
        assert client.xpending(store.keys.stream(tp), group)["pending"] == 5  # nothing acked
        assert store.group_offsets(group) == {tp: CommittedOffset(5)}
        assert store.end_offsets([out]) == {TopicPartition(out, 0): 0}
        assert store.trim([topic]) == 5  # the way out: trimming still works
    finally:
        client.config_set("maxmemory", 0)
    await member.commit(commit)
    assert client.xpending(store.keys.stream(tp), group)["pending"] == 0
    assert store.group_offsets(group) == {tp: CommittedOffset(10)}
    assert len(store.read(TopicPartition(out, 0), 0, 10)) == 1
    await member.close()
    store.close()
    client.close()


def test_a_policy_that_evicts_any_key_is_refused(private_redis: RedisLocal) -> None:
    client = redis.Redis.from_url(private_redis.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    with pytest.raises(ConfigError, match="allkeys-lru"):
        open_store(private_redis.url)
    client.config_set("maxmemory-policy", "volatile-lru")  # the store sets no TTLs: fine
    open_store(private_redis.url).close()
    client.close()


def test_unreachable_redis_is_one_line() -> None:
    with socket.socket() as s:  # a free loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreUnavailableError, match=f"cannot reach Redis at 127.0.0.1:{port}"):
        open_store(f"redis://127.0.0.1:{port}/0")
    cli = [*CLI, "lag", "--store", f"redis://127.0.0.1:{port}/0"]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=60, env=ENV)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.startswith("blackboard: error:")]
    assert len(lines) == 1 and f"cannot reach Redis at 127.0.0.1:{port}" in lines[0]


def test_settings_come_from_the_url() -> None:
    settings = RedisSettings.from_url(
        "redis://:pw@h:7000/2?key_prefix=x:&session_timeout_ms=3000&socket_timeout=5"
    )
    assert settings.key_prefix == "x:"
    assert settings.session_timeout_ms == 3000
    assert settings.heartbeat_interval_ms == 1000
    assert settings.connection_url == "redis://:pw@h:7000/2?socket_timeout=5"
    assert settings.address == "h:7000/2"
    with pytest.raises(ConfigError, match="session_timeout_ms"):
        RedisSettings.from_url("redis://h/0?session_timeout_ms=soon")
    with pytest.raises(ConfigError, match="at most a third"):
        RedisSettings.from_url("redis://h/0?session_timeout_ms=1000&heartbeat_interval_ms=500")


async def test_an_idle_worker_whose_slot_is_taken_over_stops(redis_url: str) -> None:
    from agents.agent import App
    from agents.worker import Worker
    from blackboard.blackboard import Blackboard, BlackboardSettings
    from tests.contract.test_processing import FAST
    from tests.contract.types import Result, Task, registry

    prefix = unique_name("s").replace("-", "")
    board = Blackboard(
        redis_url,
        registry=registry,
        settings=BlackboardSettings(url=redis_url, prefix=prefix, partitions=2),
    )
    app = App("test", registry=registry)

    async def double(task: Task, ctx: object) -> Result:
        return Result(n=task.n * 2)

    app.add(double, consumes=Task, publishes=Result, name="doubler")
    older = Worker(app, board, FAST, slot="0")
    running_older = asyncio.create_task(older.run())
    await older.started()
    newer = Worker(app, board, FAST, slot="0")
    running_newer = asyncio.create_task(newer.run())
    await newer.started()
    # The older worker has nothing to commit: it learns of the takeover in its poll and stops.
    await asyncio.wait_for(running_older, 30)
    board.publish_many([Task(n=i) for i in range(5)])
    await eventually(
        lambda: sorted(a.payload.n for a in board.read(Result)) == [0, 2, 4, 6, 8],  # type: ignore[attr-defined]
        what="the newer worker processes",
    )
    newer.stop()
    await running_newer
    board.close()
