"""Worker processes and the exactly-once check shared by the fault tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from blackboard.artifacts import Artifact
from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.errors import ArtifactError, StoreUnavailableError
from blackboard.wire import decode
from tests.faults.faultapp import Echo, Job, Pair, Step, registry

if TYPE_CHECKING:
    from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4


@dataclass
class WorkerProcess:
    """A ``blackboard worker`` subprocess running the fault app."""

    slot: str
    proc: subprocess.Popen[bytes]
    log: Path

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to this worker (only ever to the process this test started)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the exit code."""
        return self.proc.wait(timeout=timeout)

    def stopped(self, timeout: float = 60.0) -> int | None:
        """The exit code within ``timeout``; None if the worker is still running, after asking
        it to log its asyncio tasks' and threads' stacks (SIGUSR2, SIGUSR1) into its log."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGUSR2)
            self.signal(signal.SIGUSR1)
            time.sleep(2)
            return None

    def log_text(self) -> str:
        """What the worker logged."""
        return self.log.read_text(errors="replace")

    def stop_hard(self) -> None:
        """SIGKILL if still running (cleanup)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Cluster:
    """Workers of one fault test, on one prefix of one broker."""

    url: str
    prefix: str
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def board(self) -> Blackboard:
        """A blackboard client on the test's topics."""
        settings = BlackboardSettings(url=self.url, prefix=self.prefix, partitions=PARTITIONS)
        return Blackboard(self.url, registry=registry, settings=settings)

    def start(self, slot: str, *, max_sleep_ms: float = 3.0, extra_url: str = "") -> WorkerProcess:
        """Start a worker process with ``slot``."""
        log = self.tmp / f"worker-{slot}-{len(self.workers)}.log"
        env = {
            **os.environ,
            "FAULT_MAX_SLEEP_MS": str(max_sleep_ms),
            "PYTHONPATH": str(ROOT),
            "BLACKBOARD_LOG_LEVEL": "info",
        }
        cmd = [
            sys.executable,
            "-m",
            "blackboard.shell.cli.main",
            "worker",
            "tests.faults.faultapp:app",
            "--store",
            self.url + extra_url,
            "--prefix",
            self.prefix,
            "--partitions",
            str(PARTITIONS),
            "--slot",
            slot,
            "--grace",
            "20",
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        worker = WorkerProcess(slot, proc, log)
        self.workers.append(worker)
        return worker

    def cleanup(self) -> None:
        """Kill whatever this test started and is still running."""
        for worker in self.workers:
            worker.stop_hard()


def wait_log(worker: WorkerProcess, text: str, timeout: float = 60.0) -> None:
    """Wait until ``worker`` logged ``text`` (failing if it exits first)."""
    deadline = time.monotonic() + timeout
    while text not in worker.log_text():
        assert worker.proc.poll() is None, worker.log_text()
        assert time.monotonic() < deadline, f"no {text!r} in:\n{worker.log_text()}"
        time.sleep(0.1)


def publish_jobs(
    board: Blackboard, count: int, *, keys: int = 50, first: int = 0, rate: float = 0.0
) -> None:
    """Publish jobs ``first`` … ``first+count-1`` round-robin over ``keys`` keys (seq rises per
    key), each under its key as partition key; ``rate`` > 0 spreads them over time (jobs/s)."""
    chunk = 200
    started = time.monotonic()
    for start in range(first, first + count, chunk):
        jobs = [
            Job(key=f"k{i % keys}", seq=i) for i in range(start, min(first + count, start + chunk))
        ]
        board.publish_many(jobs, partition_keys=[job.key for job in jobs])
        if rate > 0:
            ahead = (start + chunk - first) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)


def publish_in_background(board: Blackboard, count: int, rate: float) -> threading.Thread:
    """Publish jobs from a thread while the test does its faults."""
    thread = threading.Thread(target=publish_jobs, args=(board, count), kwargs={"rate": rate})
    thread.start()
    return thread


def step_count(board: Blackboard) -> int:
    """How many Steps are committed (read_committed)."""
    return sum(1 for _ in board.records("fault.Step"))


def wait_for_steps(
    board: Blackboard, count: int, timeout: float, workers: Sequence[WorkerProcess] = ()
) -> None:
    """Wait until ``count`` Steps are committed, or fail with the workers' logs."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        try:
            seen = step_count(board)
        except StoreUnavailableError:  # the broker is restarting: ask again
            time.sleep(1)
            continue
        if seen >= count:
            return
        time.sleep(0.5)
    tails = "\n".join(
        f"--- worker {w.slot} (exit {w.proc.poll()}):\n{w.log_text()[-3000:]}" for w in workers
    )
    raise AssertionError(f"only {seen} of {count} steps after {timeout}s\n{tails}")


def pair_count(board: Blackboard) -> int:
    """How many Pairs (the last stage's outputs) are committed."""
    return sum(1 for _ in board.records("fault.Pair"))


def wait_until_settled(
    board: Blackboard, jobs: int, timeout: float, workers: Sequence[WorkerProcess] = ()
) -> None:
    """Wait until every job went through every agent (``jobs`` Pairs) and every group of the
    app reads lag 0 on every partition (a drained group is not shown behind), or fail with
    the workers' logs and the lag rows still behind."""
    deadline = time.monotonic() + timeout
    behind: list[str] = []
    pairs = 0
    while time.monotonic() < deadline:
        try:
            pairs = pair_count(board)
            rows = board.lag() if pairs >= jobs else []
        except StoreUnavailableError:  # the server is restarting: ask again
            time.sleep(1)
            continue
        behind = [f"{r.group} {r.topic}[{r.partition}] lag {r.lag}" for r in rows if r.lag]
        if pairs >= jobs and rows and not behind:
            return
        time.sleep(0.5)
    tails = "\n".join(
        f"--- worker {w.slot} (exit {w.proc.poll()}):\n{w.log_text()[-3000:]}" for w in workers
    )
    raise AssertionError(f"{pairs} of {jobs} pairs after {timeout}s; behind: {behind[:8]}\n{tails}")


def assert_exactly_once(board: Blackboard, jobs: int, *, poison: int = 0) -> None:
    """Every effect of every job, record by record: one Step whose count is the job's rank
    among its key's jobs (per-key state neither lost nor applied twice, per-key order kept),
    one Echo, one Pair joining exactly that Step and that Echo (no join part lost), and every
    group's lag 0. ``poison`` Job records that do not decode were published too: each has
    one dead letter per agent reading Jobs (``stage`` and ``echo``), and there is no other."""
    job_arts = {}
    undecodable = 0
    for record in board.records("fault.Job"):
        try:
            art = decode(record, board.registry)
        except ArtifactError:
            undecodable += 1
        else:
            job_arts[art.id] = art.payload
    assert len(job_arts) == jobs, f"{len(job_arts)} jobs on the board, expected {jobs}"
    assert undecodable == poison, f"{undecodable} undecodable jobs, expected {poison}"
    jobs_by_id: dict[str, Job] = {i: j for i, j in job_arts.items() if isinstance(j, Job)}
    steps = _one_per_job(board, Step, jobs_by_id)
    echoes = _one_per_job(board, Echo, jobs_by_id)
    by_key: dict[str, list[Job]] = defaultdict(list)
    for job in jobs_by_id.values():
        by_key[job.key].append(job)
    rank = {
        (key, job.seq): n
        for key, group in by_key.items()
        for n, job in enumerate(sorted(group, key=lambda j: j.seq), start=1)
    }
    wrong = []
    for job_id, step in steps.items():
        job = jobs_by_id[job_id]
        count = step.payload.count  # type: ignore[attr-defined]
        if count != rank[(job.key, job.seq)]:
            wrong.append(f"{job.key}#{job.seq}: count {count}, rank {rank[(job.key, job.seq)]}")
    assert not wrong, f"{len(wrong)} steps with a wrong per-key count: {sorted(wrong)[:8]}"
    # Each Pair's causes are one job's Step and Echo; every job has exactly one Pair.
    job_of = {a.id: j for j, a in steps.items()} | {a.id: j for j, a in echoes.items()}
    pairs: dict[str, int] = defaultdict(int)
    for art in board.read(Pair):
        causes = list(art.envelope.causation_ids)
        owners = {job_of.get(c) for c in causes}
        owner = owners.pop() if len(owners) == 1 else None
        assert owner is not None and sorted(causes) == sorted(
            [steps[owner].id, echoes[owner].id]
        ), f"pair {art.payload} joins {causes}, not one job's step and echo"
        pairs[owner] += 1
    doubled = [j for j, n in pairs.items() if n > 1]
    unpaired = [f"{jobs_by_id[j].key}#{jobs_by_id[j].seq}" for j in jobs_by_id if j not in pairs]
    assert not doubled, f"{len(doubled)} jobs joined more than once"
    assert not unpaired, f"{len(unpaired)} jobs never joined (a part was lost): {unpaired[:8]}"
    dlqs = [t for t in board.store.list_topics() if t.startswith(board.topics.prefix + ".")]
    dead = {t: n for t in dlqs if t.endswith(".dlq") and (n := _count(board, t))}
    expected = {board.topic("fault.Job") + ".dlq": 2 * poison} if poison else {}
    assert dead == expected, f"dead letters: {dead}, expected {expected}"
    behind = [f"{r.group} {r.topic}[{r.partition}]: {r.lag}" for r in board.lag() if r.lag]
    assert not behind, f"groups behind after the drain: {behind[:8]}"


def _one_per_job(
    board: Blackboard, model: type[BaseModel], jobs: dict[str, Job]
) -> dict[str, Artifact[BaseModel]]:
    """The one artifact of ``model`` each job caused (fails on a duplicate, a miss or a stray)."""
    found: dict[str, Artifact[BaseModel]] = {}
    doubled: list[str] = []
    name = model.__name__
    for art in board.read(model):
        [cause] = art.envelope.causation_ids
        assert cause in jobs, f"a {name} caused by {cause}, which is no job"
        if cause in found:
            doubled.append(cause)
        found[cause] = art
    missing = [f"{jobs[j].key}#{jobs[j].seq}" for j in jobs if j not in found]
    assert not doubled, f"{len(doubled)} jobs produced more than one {name}"
    assert not missing, f"{len(missing)} jobs produced no {name}: {missing[:8]}"
    return found


def _count(board: Blackboard, topic: str) -> int:
    """Committed records of ``topic`` (offsets would count transaction markers too)."""
    return sum(1 for _ in board.records(topic.removeprefix(board.topics.prefix + ".")))
