"""The app the fault tests run in real worker processes (``blackboard worker``).

``stage`` turns every Job into one Step, keeping per-key order; it sleeps a little so kills
land while handlers run and transactions are open.
"""

from __future__ import annotations

import asyncio
import os
import random

from pydantic import BaseModel

from agents import App, Context
from blackboard.artifacts import TypeRegistry, artifact

registry = TypeRegistry()


@artifact("fault.Job", registry=registry)
class Job(BaseModel):
    key: str
    seq: int


@artifact("fault.Step", registry=registry)
class Step(BaseModel):
    key: str
    seq: int


app = App("faults", registry=registry)
_MAX_SLEEP_S = float(os.environ.get("FAULT_MAX_SLEEP_MS", "3")) / 1000


@app.agent(consumes=Job, publishes=Step, ordered=True, concurrency=200)
async def stage(job: Job, ctx: Context) -> Step:
    await asyncio.sleep(random.random() * _MAX_SLEEP_S)
    return Step(key=job.key, seq=job.seq)
