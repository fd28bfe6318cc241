"""One simulated run: a (spec, policy, seed, load) on the memory store under virtual time.

The real :class:`~agents.worker.Worker` runs the simulated agents with the policy; jobs are
published at their (virtual) arrival times; the run ends when every job finished. Everything
random comes from the seed and nothing reads the real clock where it matters (the runner's
intervals read the loop's clock, join timers a :class:`LoopClock`), so a run repeats bit for
bit: :attr:`RunResult.digest` says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import struct
import time
from dataclasses import dataclass

from agents.settings import RunnerSettings
from agents.worker import Worker
from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.shell.sim.agents import Observations, SimJob, SimTask, build_app
from blackboard.shell.sim.loop import LoopClock, run_virtual
from blackboard.shell.sim.workload import Experiment, Job, generate
from scheduler.policies import as_spec

#: Runner settings in simulation: commits every 10 virtual ms, a buffer that holds the backlog.
SIM_SETTINGS = RunnerSettings(
    commit_interval_ms=10.0,
    idle_poll_s=1.0,
    poll_batch=1000,
    max_buffered=20_000,
    shutdown_grace_s=0.0,
)


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one run measured (virtual seconds).

    Attributes:
        makespans: per job, completion minus arrival, in job order.
        tenants: per job, its tenant.
        latencies: per handler call, end minus the time its input was published.
        service_share: per tenant, its share of the service time given while every tenant
            had arrivals (the first 90% of the arrival period).
        virtual_s: virtual time the run took.
        wall_s: real time the run took.
        digest: a hash of every completion time, to check runs repeat bit for bit.
    """

    policy: str
    seed: int
    load: float
    makespans: tuple[float, ...]
    tenants: tuple[str, ...]
    latencies: tuple[float, ...]
    service_share: dict[str, float]
    virtual_s: float
    wall_s: float
    digest: str


def simulate(spec: Experiment, policy: str, seed: int, load: float) -> RunResult:
    """Run one (policy, seed, load) of ``spec`` to completion under virtual time.

    Raises:
        ConfigError: an unknown policy or a bad spec.
        TimeoutError: jobs still unfinished long after the last arrival (a stuck run).
    """
    as_spec(policy)
    jobs = generate(spec, seed, load)
    started = time.perf_counter()

    async def main() -> RunResult:
        return await _run(spec, policy, seed, load, jobs)

    result = run_virtual(main)
    return dataclasses.replace(result, wall_s=time.perf_counter() - started)


def run_real(
    spec: Experiment,
    policy: str,
    seed: int,
    load: float,
    *,
    url: str,
    prefix: str,
    scale: float,
    settings: RunnerSettings | None = None,
) -> RunResult:
    """The same run in real time on any store (e.g. Kafka): arrival times and service times
    are multiplied by ``scale``; the figures are divided by it again, so they compare with
    :func:`simulate`'s (commit latencies of the store come on top, and nothing is bit for bit).

    Raises:
        ConfigError: an unknown policy or a bad spec.
        TimeoutError: jobs still unfinished long after the last arrival.
    """
    as_spec(policy)
    jobs = [
        Job(j.index, j.arrival * scale, j.tenant, tuple(x * scale for x in j.sizes))
        for j in generate(spec, seed, load)
    ]
    started = time.perf_counter()

    async def main() -> RunResult:
        return await _run(spec, policy, seed, load, jobs, url=url, prefix=prefix, settings=settings)

    result = asyncio.run(main())
    return dataclasses.replace(
        result,
        makespans=tuple(m / scale for m in result.makespans),
        latencies=tuple(x / scale for x in result.latencies),
        wall_s=time.perf_counter() - started,
    )


async def _run(
    spec: Experiment,
    policy: str,
    seed: int,
    load: float,
    jobs: list[Job],
    *,
    url: str = "memory://",
    prefix: str = "bb",
    settings: RunnerSettings | None = None,
) -> RunResult:
    loop = asyncio.get_running_loop()
    t0 = loop.time()  # 0.0 on the virtual loop; arrivals count from here on a real one
    tenants = {j.index: j.tenant for j in jobs}
    obs = Observations(expected=len(jobs))
    app, options = build_app(spec, tenants, obs)
    board = Blackboard(
        url,
        registry=app.registry,
        settings=BlackboardSettings(url=url, prefix=prefix, partitions=spec.partitions),
    )
    worker = Worker(
        app,
        board,
        settings or SIM_SETTINGS,
        gc_gen0_threshold=None,
        clock=LoopClock(loop),
        policy=dataclasses.replace(options, name=policy),
    )
    board.ensure_topics(app.types())
    running = asyncio.create_task(worker.run())
    await worker.started()
    for job in jobs:
        delay = t0 + job.arrival - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        now = loop.time()
        rest = job.work
        payload: SimJob | SimTask
        if spec.workload == "chain":
            sizes = list(job.sizes)
            payload = SimTask(job=job.index, step=0, sizes=sizes, sent=now, remaining=rest)
        else:
            payload = SimJob(job=job.index, sizes=list(job.sizes), sent=now, remaining=rest)
        board.publish(payload, correlation_id=job.correlation_id, tenant=job.tenant)
    horizon = max(1000.0, 20 * (jobs[-1].arrival if jobs else 0.0))
    try:
        async with asyncio.timeout(horizon):
            await obs.finished.wait()
    finally:
        worker.stop()
        await running
        board.close()
    return _result(spec, policy, seed, load, jobs, obs, loop.time() - t0, t0)


def _result(
    spec: Experiment,
    policy: str,
    seed: int,
    load: float,
    jobs: list[Job],
    obs: Observations,
    end: float,
    t0: float,
) -> RunResult:
    ordered = sorted(jobs, key=lambda j: j.index)
    makespans = tuple(obs.done[j.index] - t0 - j.arrival for j in ordered)
    window = t0 + 0.9 * max((j.arrival for j in jobs), default=0.0)
    given: dict[str, float] = {t: 0.0 for t in spec.tenants}
    for tenant, start, stop in obs.service:
        given[tenant] = given.get(tenant, 0.0) + max(0.0, min(stop, window) - start)
    total = sum(given.values()) or 1.0
    digest = hashlib.sha256(struct.pack(f"{len(makespans)}d", *makespans)).hexdigest()
    return RunResult(
        policy,
        seed,
        load,
        makespans,
        tuple(j.tenant for j in ordered),
        tuple(obs.latencies),
        {t: v / total for t, v in sorted(given.items())},
        end,
        0.0,
        digest[:16],
    )
