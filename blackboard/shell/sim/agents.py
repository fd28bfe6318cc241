"""The simulated agents: handlers that ``await asyncio.sleep(service_time)`` on the virtual
clock and note what happened in a :class:`Observations`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pydantic import BaseModel

from agents.agent import App
from agents.collected import JoinSet
from agents.context import Context
from agents.retry import RetryPolicy
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.shell.sim.workload import Experiment
from scheduler.base import Admission
from scheduler.ledger import Ledger
from scheduler.policies import PolicySpec

SIM_TYPES = TypeRegistry()
#: Simulated handlers never fail; one attempt, no time limit.
_ONCE = RetryPolicy(max_attempts=1)


@artifact("sim.Task", registry=SIM_TYPES)
class SimTask(BaseModel):
    """One step of a chain job (or one part of a fan-out job)."""

    job: int
    step: int
    sizes: list[float]
    sent: float
    remaining: float


@artifact("sim.Job", registry=SIM_TYPES)
class SimJob(BaseModel):
    """A fan-out job: its parts' sizes."""

    job: int
    sizes: list[float]
    sent: float
    remaining: float


@artifact("sim.PartDone", registry=SIM_TYPES)
class SimPartDone(BaseModel):
    """A finished part of a fan-out job."""

    job: int
    step: int
    sent: float
    remaining: float = 0.0


def payload_estimator(info: Admission, ledger: Ledger) -> float | None:
    """The simulator's estimator: the ``remaining`` work a simulated payload carries (for a
    chain task, the job's steps still to run; for a fan-out part, its own size)."""
    found = getattr(info.payload, "remaining", None)
    return float(found) if found is not None else None


@dataclass(slots=True)
class Observations:
    """What handlers saw, in virtual seconds."""

    done: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    service: list[tuple[str, float, float]] = field(default_factory=list)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    def complete(self, job: int, at: float) -> None:
        """Job ``job`` finished at ``at``."""
        self.done[job] = at
        if len(self.done) >= self.expected:
            self.finished.set()


def build_app(
    spec: Experiment, tenants: dict[int, str], obs: Observations
) -> tuple[App, PolicySpec]:
    """The simulated agents of ``spec`` and the policy options they run with (the policy's
    name is filled in per run)."""
    app = App(f"sim-{spec.name}", registry=SIM_TYPES)
    loop = asyncio.get_running_loop

    async def serve(size: float, job: int, sent: float) -> float:
        start = loop().time()
        await asyncio.sleep(size)
        now = loop().time()
        obs.service.append((tenants[job], start, now))
        obs.latencies.append(now - sent)
        return now

    if spec.workload == "chain":

        async def step(task: SimTask, ctx: Context) -> SimTask | None:
            now = await serve(task.sizes[task.step], task.job, task.sent)
            nxt = task.step + 1
            if nxt < len(task.sizes):
                rest = sum(task.sizes[nxt:])
                return SimTask(job=task.job, step=nxt, sizes=task.sizes, sent=now, remaining=rest)
            obs.complete(task.job, now)
            return None

        app.add(
            step,
            consumes=SimTask,
            publishes=SimTask,
            concurrency=spec.concurrency,
            retry=_ONCE,
            breaker=None,
        )
    else:

        async def split(job: SimJob, ctx: Context) -> list[SimTask]:
            now = loop().time()
            return [
                SimTask(job=job.job, step=i, sizes=job.sizes, sent=now, remaining=size)
                for i, size in enumerate(job.sizes)
            ]

        async def work(task: SimTask, ctx: Context) -> SimPartDone:
            now = await serve(task.sizes[task.step], task.job, task.sent)
            return SimPartDone(job=task.job, step=task.step, sent=now)

        async def join(parts: JoinSet, ctx: Context) -> None:
            done = parts[SimPartDone]
            obs.complete(done[0].job, loop().time())

        many = max(1000, spec.concurrency)
        app.add(
            split, consumes=SimJob, publishes=SimTask, concurrency=many, retry=_ONCE, breaker=None
        )
        app.add(
            work,
            consumes=SimTask,
            publishes=SimPartDone,
            concurrency=spec.concurrency,
            retry=_ONCE,
            breaker=None,
        )
        app.join(consumes={SimPartDone: spec.steps}, concurrency=many, retry=_ONCE, breaker=None)(
            join
        )
    options = PolicySpec(
        estimator=payload_estimator,
        aging=spec.aging,
        weights=spec.weights,
        charge=spec.drr_charge,
    )
    return app, options
