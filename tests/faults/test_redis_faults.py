"""Fault tests on a real redis-server, with real worker processes (issue: Redis store).

Each ends with :func:`~tests.faults.harness.assert_exactly_once`: every job's Step (with the
per-key count from the agent's state), Echo and Pair (a join) exactly once, no dead letter, and
every group's lag 0.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from compose.redis_local import RedisLocal
from tests.faults.harness import (
    Cluster,
    WorkerProcess,
    assert_exactly_once,
    pair_count,
    publish_in_background,
    publish_jobs,
    step_count,
    wait_for_steps,
    wait_log,
    wait_until_settled,
)
from tests.services import unique_name

pytestmark = pytest.mark.redis

#: Short sessions, so a dead or paused worker's partitions move within seconds.
FAST_SESSION = "session_timeout_ms=3000&heartbeat_interval_ms=250"


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(f"{redis_url}?{FAST_SESSION}", unique_name("f").replace("-", ""), tmp_path)
    yield c
    c.cleanup()


def _events(worker: WorkerProcess, event: str) -> list[dict[str, object]]:
    """The worker's JSON log lines of one event."""
    found = []
    for line in worker.log_text().splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            doc = json.loads(line)
            if doc.get("event") == event:
                found.append(doc)
    return found


def _stop(*workers: WorkerProcess) -> None:
    """SIGTERM the workers; each must exit 0 (its log tail in the failure otherwise)."""
    for w in workers:
        w.signal(signal.SIGTERM)
    for w in workers:
        code = w.stopped(60)
        assert code == 0, f"worker {w.slot} exit {code}:\n{w.log_text()[-20000:]}"


def _claimed(worker: WorkerProcess) -> int:
    """Entries the worker claimed from earlier owners when it took partitions."""
    return sum(int(str(e["claimed"])) for e in _events(worker, "partition taken"))


def test_kill_9_mid_batch_then_restart_same_slot(cluster: Cluster) -> None:
    board = cluster.board()
    jobs = 6000
    # 50 keys run one job at a time each, ~20 ms a job: work is still left when the kill lands
    worker = cluster.start("0", max_sleep_ms=40)
    wait_log(worker, "partitions assigned")
    publish_jobs(board, jobs)
    wait_for_steps(board, 1000, 120, [worker])
    worker.signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    killed_at = step_count(board)
    assert killed_at < jobs, "the kill must land while work remains"

    restarted = cluster.start("0", max_sleep_ms=5)
    # The restarted slot takes over from the dead process at once (no session to wait out)
    # and claims what it had read but not committed.
    wait_log(restarted, "took over the worker slot")
    wait_until_settled(board, jobs, 120, [restarted])
    assert _claimed(restarted) > 0
    _stop(restarted)
    assert_exactly_once(board, jobs)
    board.close()


def test_dead_workers_pending_entries_are_claimed_by_another(cluster: Cluster) -> None:
    board = cluster.board()
    jobs = 5000
    doomed = cluster.start("0", max_sleep_ms=40)
    survivor = cluster.start("1", max_sleep_ms=40)
    for w in (doomed, survivor):
        wait_log(w, "partitions assigned")
    publish_jobs(board, jobs)
    wait_for_steps(board, 800, 120, [doomed, survivor])
    claimed_before = _claimed(survivor)
    doomed.signal(signal.SIGKILL)
    assert doomed.wait() == -signal.SIGKILL
    assert step_count(board) < jobs, "the kill must land while work remains"
    # Nobody restarts slot 0: once its session runs out, the survivor takes its partitions and
    # claims the entries pending on the dead consumer (XAUTOCLAIM).
    wait_until_settled(board, jobs, 120, [survivor])
    assert _claimed(survivor) > claimed_before
    _stop(survivor)
    assert_exactly_once(board, jobs)
    board.close()


def test_scale_out_to_three_workers_and_back_while_records_flow(cluster: Cluster) -> None:
    board = cluster.board()
    jobs = 6000
    first = cluster.start("0", max_sleep_ms=3)
    wait_log(first, "partitions assigned")
    publisher = publish_in_background(cluster.board(), jobs, rate=1500)
    wait_for_steps(board, 1000, 120, [first])
    extra = [cluster.start("1", max_sleep_ms=3), cluster.start("2", max_sleep_ms=3)]
    for w in extra:
        wait_log(w, "partitions assigned")
    wait_for_steps(board, 3000, 120, [first, *extra])
    _stop(*extra)
    publisher.join()
    wait_until_settled(board, jobs, 120, [first])
    _stop(first)
    assert "partitions revoked" in first.log_text()
    assert_exactly_once(board, jobs)
    board.close()


def test_paused_zombie_cannot_commit_after_its_partitions_moved(cluster: Cluster) -> None:
    board = cluster.board()
    jobs = 4000
    zombie = cluster.start("0", max_sleep_ms=3)
    other = cluster.start("1", max_sleep_ms=3)
    for w in (zombie, other):
        wait_log(w, "partitions assigned")
    publisher = publish_in_background(cluster.board(), jobs, rate=400)
    wait_for_steps(board, 500, 120, [zombie, other])
    zombie.signal(signal.SIGSTOP)
    time.sleep(5)  # past the 3 s session: the group moves its partitions to `other`
    assert publisher.is_alive(), "records must still flow after the pause"
    wait_for_steps(board, step_count(board) + 100, 60, [other])
    zombie.signal(signal.SIGCONT)
    publisher.join()
    wait_until_settled(board, jobs, 120, [zombie, other])
    _stop(zombie, other)
    assert _events(zombie, "session ran out; rejoining"), zombie.log_text()
    assert_exactly_once(board, jobs)
    board.close()


def test_redis_killed_three_times_while_records_flow_between_agents(
    redis_local: RedisLocal, redis_url: str, tmp_path: Path
) -> None:
    """The server dies three times while the workers append Steps and Echoes and the joiner
    holds halves of pairs: commits fail mid-flight and the runners rewind. Nothing may be lost
    or doubled, join parts included (a rewind once reloaded the keyed state of a partition
    number while another topic's partition with that number kept writing parts into it)."""
    assert redis_local.appendonly
    cluster = Cluster(redis_url, unique_name("r").replace("-", ""), tmp_path)
    try:
        board = cluster.board()
        jobs = 6000
        # ~20 ms a job, one job at a time per key: work is in flight when the server dies
        workers = [cluster.start("0", max_sleep_ms=40), cluster.start("1", max_sleep_ms=40)]
        for w in workers:
            wait_log(w, "partitions assigned")
        publish_jobs(board, jobs)
        for round_ in range(3):
            wait_for_steps(board, 1000 * (round_ + 1), 120, workers)
            assert pair_count(board) < jobs, "the server must die while work remains"
            redis_local.kill()
            time.sleep(1)
            redis_local.restart()
        wait_until_settled(board, jobs, 180, workers)  # no intervention: the workers recover
        for w in workers:
            assert w.proc.poll() is None, w.log_text()
        _stop(*workers)
        assert any(_events(w, "redis call failed; retrying") for w in workers)
        assert any(_events(w, "commit failed; redoing from the committed offsets") for w in workers)
        assert_exactly_once(board, jobs)
        board.close()
    finally:
        cluster.cleanup()
