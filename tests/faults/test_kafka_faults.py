"""Fault tests on real Kafka brokers, with real worker processes.

Each ends with :func:`~tests.faults.harness.assert_exactly_once` (read_committed): every job's
Step (with the per-key count from the agent's state), Echo and Pair (a join) exactly once, no
dead letter, and every group's lag 0 once drained. The scenarios marked ``BOTH_VERSIONS`` run
on the pinned Kafka 4.0.x broker and on a 3.9.x one; the others on the pinned one.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blackboard.offsets import decode_finished
from blackboard.records import TopicPartition
from compose.kafka_local import KAFKA_VERSION, LEGACY_KAFKA_VERSION, KafkaLocal
from tests.faults.harness import (
    Cluster,
    assert_exactly_once,
    publish_in_background,
    publish_jobs,
    step_count,
    wait_for_steps,
    wait_log,
    wait_until_settled,
)
from tests.services import unique_name

pytestmark = pytest.mark.kafka


BOTH_VERSIONS = pytest.mark.parametrize(
    "broker", [KAFKA_VERSION, LEGACY_KAFKA_VERSION], indirect=True
)


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    """``host:port`` of the session broker of the version asked for (default: the pinned)."""
    version = getattr(request, "param", KAFKA_VERSION)
    name = "kafka_bootstrap" if version == KAFKA_VERSION else "kafka_legacy_bootstrap"
    return str(request.getfixturevalue(name))


@pytest.fixture
def cluster(broker: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(f"kafka://{broker}", unique_name("f").replace("-", ""), tmp_path)
    yield c
    c.cleanup()


@BOTH_VERSIONS
def test_kill_9_mid_transaction_then_restart_same_slot(cluster: Cluster) -> None:
    board = cluster.board()
    jobs = 6000
    # 50 keys run one job at a time each, ~20 ms a job: work is still left when the kill lands
    worker = cluster.start("0", max_sleep_ms=40)
    wait_log(worker, "partitions assigned")
    # Published over ~6 s, so work remains when the kill lands however fast the worker is.
    publisher = publish_in_background(cluster.board(), jobs, rate=1000)
    wait_for_steps(board, 1000, 120, [worker])
    worker.signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    killed_at = step_count(board)
    assert killed_at < jobs, "the kill must land while work remains"

    restarted = cluster.start("0", max_sleep_ms=5)  # the restart may go fast
    started = time.monotonic()
    # The restarted slot's init_transactions aborts the dead one's open transaction, so
    # read_committed readers move on within seconds.
    wait_for_steps(board, killed_at + 1, 30, [restarted])
    assert time.monotonic() - started < 30
    publisher.join()
    wait_until_settled(board, jobs, 180, [restarted])
    restarted.signal(signal.SIGTERM)
    assert restarted.wait() == 0
    assert_exactly_once(board, jobs)
    board.close()


@BOTH_VERSIONS
def test_sigterm_commits_in_flight_work_and_exits_cleanly(cluster: Cluster) -> None:
    board = cluster.board()
    jobs = 3000
    worker = cluster.start("0", max_sleep_ms=200)  # slow handlers: many in flight at SIGTERM
    wait_log(worker, "partitions assigned")
    publish_jobs(board, jobs)
    wait_for_steps(board, 200, 120, [worker])
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.log_text()
    log = worker.log_text()
    assert "draining" in log and "agent stopped" in log
    done = step_count(board)
    offsets = board.store.group_offsets(board.topics.group("stage"))
    # finished = below the committed offset, plus those above it named in the metadata
    finished = sum(c.offset + len(decode_finished(c.offset, c.metadata)) for c in offsets.values())
    assert finished == done > 0  # what finished was committed with its offsets, nothing else

    worker = cluster.start("0", max_sleep_ms=2)
    wait_until_settled(board, jobs, 180, [worker])
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert_exactly_once(board, jobs)
    board.close()


@BOTH_VERSIONS
def test_scale_out_to_three_workers_and_back_while_records_flow(cluster: Cluster) -> None:
    board = cluster.board()
    jobs = 8000
    first = cluster.start("0", max_sleep_ms=3)
    wait_log(first, "partitions assigned")
    publisher = publish_in_background(cluster.board(), jobs, rate=1000)
    wait_for_steps(board, 1000, 120, [first])
    extra = [cluster.start("1", max_sleep_ms=3), cluster.start("2", max_sleep_ms=3)]
    for w in extra:
        wait_log(w, "partitions assigned")
    wait_for_steps(board, 4000, 180, [first, *extra])
    for w in extra:
        w.signal(signal.SIGTERM)
    for w in extra:
        assert w.wait() == 0, w.log_text()
    publisher.join()
    wait_until_settled(board, jobs, 180, [first])
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    assert "partitions revoked" in first.log_text()
    assert_exactly_once(board, jobs)
    board.close()


def test_paused_zombie_cannot_commit_after_its_partitions_moved(cluster: Cluster) -> None:
    board = cluster.board()
    jobs = 5000
    fast_timeout = "?consumer.session.timeout.ms=6000&consumer.heartbeat.interval.ms=500"
    zombie = cluster.start("0", max_sleep_ms=3, extra_url=fast_timeout)
    other = cluster.start("1", max_sleep_ms=3, extra_url=fast_timeout)
    for w in (zombie, other):
        wait_log(w, "partitions assigned")
    publisher = publish_in_background(cluster.board(), jobs, rate=250)
    wait_for_steps(board, 500, 120, [zombie, other])
    zombie.signal(signal.SIGSTOP)
    time.sleep(9)  # past the session timeout: the group moves its partitions to `other`
    assert publisher.is_alive(), "records must still flow after the pause"
    wait_for_steps(board, step_count(board) + 100, 60, [other])
    zombie.signal(signal.SIGCONT)
    publisher.join()
    wait_until_settled(board, jobs, 180, [zombie, other])
    for w in (zombie, other):
        w.signal(signal.SIGTERM)
    for w in (zombie, other):
        assert w.wait() == 0, w.log_text()
    assert_exactly_once(board, jobs)
    board.close()


def test_second_process_with_the_same_slot_fences_the_first(cluster: Cluster) -> None:
    board = cluster.board()
    jobs = 4000
    older = cluster.start("0", max_sleep_ms=3)
    wait_log(older, "partitions assigned")
    # slow enough that the older process still has commits to make once the newer one starts
    publisher = publish_in_background(cluster.board(), jobs, rate=400)
    wait_for_steps(board, 500, 120, [older])
    newer = cluster.start("0", max_sleep_ms=3)
    assert older.wait(90) == 0, older.log_text()  # fenced, then stops cleanly
    assert "took over this worker slot" in older.log_text()
    publisher.join()
    wait_until_settled(board, jobs, 180, [newer])
    newer.signal(signal.SIGTERM)
    assert newer.wait() == 0
    assert_exactly_once(board, jobs)
    board.close()


def test_open_transaction_is_not_counted_in_lag(cluster: Cluster) -> None:
    from confluent_kafka import Producer

    board = cluster.board()
    publish_jobs(board, 10, keys=1)
    topic = board.topic("fault.Job")
    ends_before = board.store.end_offsets([topic])
    producer = Producer(
        {
            "bootstrap.servers": cluster.url.removeprefix("kafka://"),
            "transactional.id": unique_name("open-txn"),
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    tp = next(tp for tp, end in ends_before.items() if end > 0)
    for _ in range(5):
        producer.produce(topic, b"{}", b"k1", partition=tp.partition)
    producer.flush(30)
    assert board.store.end_offsets([topic]) == ends_before  # last stable offset, not the HWM
    assert [
        r.offset for r in board.store.read(TopicPartition(topic, tp.partition), 0, 100)
    ] == list(range(10))
    producer.abort_transaction(30)
    producer.flush(30)
    board.close()


def _skipped_markers(broker: KafkaLocal) -> str:
    """The broker's own account of commit markers it dropped after the restart, if any.

    Kafka 4.1+ (KAFKA-20734, still in 4.4.0) takes a partition without a leader for a deleted
    one: markers of a commit that was between PrepareCommit and CompleteCommit at the kill are
    dropped while the restarted node is fenced for a moment, and the commit may be recorded
    as complete. Its records then stay open until the same producer commits to those
    partitions again, which no client can force; this names that cause when the test fails.
    """
    lines = [
        line
        for line in broker.log_file.read_text(errors="replace").splitlines()
        if "Couldn't find leader endpoint" in line
    ]
    if not lines:
        return "(the broker dropped no transaction markers)"
    return "broker dropped transaction markers (KAFKA-20734):\n" + "\n".join(lines[-5:])


def test_broker_hard_kill_and_restart_while_workers_run(
    kafka_local: KafkaLocal, kafka_bootstrap: str, tmp_path: Path
) -> None:
    cluster = Cluster(f"kafka://{kafka_bootstrap}", unique_name("b").replace("-", ""), tmp_path)
    try:
        board = cluster.board()
        jobs = 12000
        # ~40 ms a job, one job at a time per key over 50 keys: at least ~10 s of work, so work
        # is in flight when the broker dies however fast the runtime gets. Everything is
        # published first: a publish while the broker is down fails (a clear error, by design).
        workers = [cluster.start("0", max_sleep_ms=80), cluster.start("1", max_sleep_ms=80)]
        for w in workers:
            wait_log(w, "partitions assigned")
        publish_jobs(board, jobs)
        wait_for_steps(board, 1000, 120, workers)
        assert step_count(board) < jobs, "the broker must die while work remains"
        kafka_local.kill()
        time.sleep(2)
        kafka_local.restart()
        try:
            wait_until_settled(board, jobs, 240, workers)  # no intervention: the workers recover
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_skipped_markers(kafka_local)}") from None
        for w in workers:
            assert w.proc.poll() is None, w.log_text()
            w.signal(signal.SIGTERM)
        for w in workers:
            assert w.wait() == 0, w.log_text()
        assert_exactly_once(board, jobs)
        board.close()
    finally:
        cluster.cleanup()


def test_poison_record_near_the_size_limit_is_dead_lettered_and_work_goes_on(
    cluster: Cluster,
) -> None:
    """A 998 KB value that is no JSON fits message.max.bytes, but its dead letter (the value
    plus the bb.dlq.* headers with a stack trace) did not: the commit failed and the worker
    exited, again on every restart. Its dead letter is cut to fit instead, saying what was
    cut; replay reads the value back from the original topic."""
    from confluent_kafka import Producer

    from blackboard.deadletters import DeadLetterFilter, DeadLetters

    board = cluster.board()
    worker = cluster.start("0", max_sleep_ms=3)
    wait_log(worker, "partitions assigned")
    publish_jobs(board, 300)
    poison = b"\xff" + b"x" * 999_000  # fits alone (with its key and header); not JSON
    producer = Producer({"bootstrap.servers": cluster.url.removeprefix("kafka://")})
    producer.produce(board.topic("fault.Job"), poison, b"k1", headers=[("bb.type", b"fault.Job")])
    assert producer.flush(30) == 0
    publish_jobs(board, 300, first=300)
    wait_until_settled(board, 600, 120, [worker])
    assert worker.proc.poll() is None, worker.log_text()[-3000:]
    dlq = DeadLetters(board)
    entries = dlq.entries(DeadLetterFilter(stage="deserialize"))
    assert sorted(e.agent for e in entries) == ["echo", "stage"]  # once per agent reading Jobs
    for entry in entries:
        assert entry.header("bb.dlq.truncated") == "stacktrace,value"
        assert int(entry.header("bb.dlq.original.size")) > 999_000
        assert entry.record.value == b"" and entry.record.key == b"k1"
        assert entry.header("bb.dlq.original.topic") == board.topic("fault.Job")
        replayed = dlq.replay_record(entry)  # the cut value comes back from the original topic
        assert replayed.value == poison and replayed.key == b"k1"
    worker.signal(signal.SIGTERM)
    assert worker.stopped(60) == 0, worker.log_text()[-20000:]
    assert_exactly_once(board, 600, poison=1)
    board.close()


@BOTH_VERSIONS
def test_an_in_process_member_joining_and_leaving_every_second(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits followed at once by rebalances: a member in this process joins and leaves
    about every second while a worker process runs slow handlers, so handovers land right
    after commits (each new owner reads committed offsets and restores state while the last
    commit's markers may be pending: a pending commit read as "never committed" redid finished
    records and lost restored state and join parts). It leaves
    without waiting for its handlers (grace 0), so its last commit names finished offsets above
    the committed one, which the next owner reads while that commit's markers may be pending."""
    import asyncio

    from agents.settings import RunnerSettings
    from agents.worker import Worker
    from tests.faults import faultapp

    monkeypatch.setattr(faultapp, "_MAX_SLEEP_S", 0.1)

    board = cluster.board()
    jobs = 6000
    base = cluster.start("0", max_sleep_ms=100)
    wait_log(base, "partitions assigned")
    publisher = publish_in_background(cluster.board(), jobs, rate=300)
    wait_for_steps(board, 300, 120, [base])

    async def storm() -> int:
        cycles = 0
        settings = RunnerSettings(shutdown_grace_s=0)
        # While records flow, and at least 10 times (a busy machine joins slowly).
        while (publisher.is_alive() or cycles < 10) and cycles < 30:
            worker = Worker(faultapp.app, cluster.board(), settings, slot="1")
            running = asyncio.create_task(worker.run())
            await worker.started()
            await asyncio.sleep(0.3 + 0.1 * (cycles % 5))
            worker.stop()
            await running
            cycles += 1
        return cycles

    cycles = asyncio.run(storm())
    assert cycles >= 10, f"only {cycles} join/leave cycles"
    publisher.join()
    wait_until_settled(board, jobs, 240, [base])
    base.signal(signal.SIGTERM)
    assert base.stopped(60) == 0, base.log_text()[-20000:]
    assert_exactly_once(board, jobs)
    board.close()
