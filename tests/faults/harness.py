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

from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.errors import StoreUnavailableError
from tests.faults.faultapp import Job, Step, registry

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
            "blackboard.cli.main",
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
    key); ``rate`` > 0 spreads them over time (jobs/s)."""
    chunk = 200
    started = time.monotonic()
    for start in range(first, first + count, chunk):
        jobs = [
            Job(key=f"k{i % keys}", seq=i) for i in range(start, min(first + count, start + chunk))
        ]
        by_key: dict[str, list[Job]] = defaultdict(list)
        for job in jobs:
            by_key[job.key].append(job)
        for key, group in by_key.items():  # the partition key is the job key
            board.publish_many(group, partition_key=key)
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


def assert_exactly_once(board: Blackboard, jobs: int) -> None:
    """Every job produced exactly one Step (by cause), none missing, per-key order kept."""
    job_ids = {a.id: a.payload for a in board.read(Job)}
    assert len(job_ids) == jobs, f"{len(job_ids)} jobs on the board, expected {jobs}"
    causes: dict[str, int] = defaultdict(int)
    per_key: dict[str, list[int]] = defaultdict(list)
    step_ids: set[str] = set()
    for art in board.read(Step):
        step: Step = art.payload  # type: ignore[assignment]
        causes[art.envelope.causation_ids[0]] += 1
        step_ids.add(art.id)
        per_key[step.key].append(step.seq)
    duplicates = {c: n for c, n in causes.items() if n > 1}
    missing = set(job_ids) - set(causes)
    assert not duplicates, f"{len(duplicates)} jobs produced more than one step"
    assert not missing, f"{len(missing)} jobs produced no step"
    assert len(step_ids) == jobs
    disordered = [k for k, seqs in per_key.items() if seqs != sorted(seqs)]
    assert not disordered, f"per-key order broken for {disordered[:5]}"
