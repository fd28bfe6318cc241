"""The app the fault tests run in real worker processes (``blackboard worker``).

Three agents, so a fault hits every kind of effect the runtime commits:

- ``stage`` (ordered) turns every Job into one Step and counts the Jobs of each key in its
  keyed state: the Step carries that count, so a lost or repeated state write shows up in the
  Step itself (the n-th Job of a key must say n).
- ``echo`` turns every Job into one Echo.
- ``pair`` joins each Job's Step and Echo into one Pair, holding the first part in keyed state
  until the second arrives: a lost part shows up as a missing Pair.

Step and Echo are published under the partition key ``<key>/<seq>`` (the join key), so both
halves of a pair meet on one partition of the two topics. Handlers sleep a little so faults
land while handlers run and transactions are open.
"""

from __future__ import annotations

import asyncio
import os
import random

from pydantic import BaseModel

from agents import App, Context
from agents.collected import JoinSet
from blackboard.artifacts import Envelope, TypeRegistry, artifact

registry = TypeRegistry()


@artifact("fault.Job", registry=registry)
class Job(BaseModel):
    key: str
    seq: int


@artifact("fault.Step", registry=registry)
class Step(BaseModel):
    key: str
    seq: int
    count: int
    """How many Jobs of ``key`` the stage had counted, this one included."""


@artifact("fault.Echo", registry=registry)
class Echo(BaseModel):
    key: str
    seq: int


@artifact("fault.Pair", registry=registry)
class Pair(BaseModel):
    key: str
    seq: int
    count: int


app = App("faults", registry=registry)
_MAX_SLEEP_S = float(os.environ.get("FAULT_MAX_SLEEP_MS", "3")) / 1000


def pair_key(key: str, seq: int) -> str:
    """The join key (and partition key) of a Job's Step and Echo."""
    return f"{key}/{seq}"


@app.agent(consumes=Job, publishes=Step, ordered=True, concurrency=200)
async def stage(job: Job, ctx: Context) -> None:
    await asyncio.sleep(random.random() * _MAX_SLEEP_S)
    name = f"n:{job.key}"
    count = int(ctx.state.get(name) or b"0") + 1
    ctx.state.set(name, str(count).encode())
    ctx.publish(
        Step(key=job.key, seq=job.seq, count=count), partition_key=pair_key(job.key, job.seq)
    )


@app.agent(consumes=Job, publishes=Echo, concurrency=200)
async def echo(job: Job, ctx: Context) -> None:
    await asyncio.sleep(random.random() * _MAX_SLEEP_S)
    ctx.publish(Echo(key=job.key, seq=job.seq), partition_key=pair_key(job.key, job.seq))


def _join_key(payload: BaseModel, envelope: Envelope) -> str:
    return pair_key(payload.key, payload.seq)  # type: ignore[attr-defined]


@app.join(consumes={Step: 1, Echo: 1}, publishes=Pair, key=_join_key, concurrency=200)
async def pair(parts: JoinSet, ctx: Context) -> Pair:
    [step] = parts[Step]
    return Pair(key=step.key, seq=step.seq, count=step.count)  # type: ignore[attr-defined]
