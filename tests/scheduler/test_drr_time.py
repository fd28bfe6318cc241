"""``drr`` charged by service time: tenants with expensive records get their weighted share of
the handler time, not of the records (queue-level, then through the runner in virtual time)."""

from __future__ import annotations

import asyncio
import heapq
from collections import defaultdict

import pytest
from pydantic import BaseModel

from agents.agent import App
from agents.context import Context
from agents.worker import Worker
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.errors import ConfigError
from blackboard.shell.sim.loop import run_virtual
from blackboard.shell.testing import FAST_SETTINGS, TestBoard
from scheduler import Admission, Decision, Ledger, PolicySpec, make_queue

#: Service time of one record of each tenant: "heavy" records cost four times "light" ones.
COST = {"heavy": 4.0, "light": 1.0, "gold": 2.0}


def _serve(
    spec: PolicySpec, tenants: dict[str, int], servers: int, horizon: float
) -> dict[str, float]:
    """Handler time each tenant got from a ready queue of ``spec`` feeding ``servers`` slots,
    every tenant backlogged (``tenants``: records queued), until ``horizon`` seconds."""
    queue = make_queue(spec, "agent", Ledger())
    for tenant, n in tenants.items():
        for i in range(n):
            queue.push(f"{tenant}-{i}", Admission("agent", f"{tenant}-{i}", tenant), 0.0)
    got: defaultdict[str, float] = defaultdict(float)
    running: list[tuple[float, int, str, Decision]] = []
    now, seq = 0.0, 0
    while now < horizon:
        while len(running) < servers and queue:
            item, decision = queue.pop(now)
            tenant = item.split("-")[0]
            heapq.heappush(running, (now + COST[tenant], seq, tenant, decision))
            seq += 1
        now, _, tenant, finished = heapq.heappop(running)
        got[tenant] += COST[tenant]
        queue.finished(Admission("agent", "", tenant), finished, COST[tenant])
    return got


def _shares(got: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
    """Each tenant's share of handler time over its weighted share."""
    total, wsum = sum(got.values()), sum(weights.values())
    return {t: (got[t] / total) / (w / wsum) for t, w in weights.items()}


@pytest.mark.parametrize("servers", [1, 4])
def test_time_charge_gives_equal_handler_time_with_unequal_record_costs(servers: int) -> None:
    backlog = {"heavy": 2000, "light": 2000}
    by_records = _shares(
        _serve(PolicySpec("drr", charge="records"), backlog, servers, 1000.0),
        {"heavy": 1, "light": 1},
    )
    by_time = _shares(_serve(PolicySpec("drr"), backlog, servers, 1000.0), {"heavy": 1, "light": 1})
    # One per record: heavy gets 4/5 of the handler time (1.6 of its share), light 0.4.
    assert by_records["heavy"] > 1.5 and by_records["light"] < 0.5
    # By service time: each within 10% of half the time.
    assert all(0.9 <= s <= 1.1 for s in by_time.values()), by_time


def test_time_charge_follows_the_weights() -> None:
    backlog = {"gold": 3000, "heavy": 3000, "light": 3000}
    weights = {"gold": 3.0, "heavy": 1.0, "light": 1.0}
    spec = PolicySpec("drr", weights={"gold": 3.0}, charge="time")
    shares = _shares(_serve(spec, backlog, 2, 2000.0), weights)
    assert all(0.9 <= s <= 1.1 for s in shares.values()), shares


def test_time_charge_corrects_by_the_measured_time_and_refunds_records_that_never_ran() -> None:
    q = make_queue(PolicySpec("drr"), "agent", Ledger())  # charge="time" is the default
    for item, tenant in (("h1", "heavy"), ("h2", "heavy"), ("l1", "light"), ("l2", "light")):
        q.push(item, Admission("agent", item, tenant), 0.0)
    # A round is worth the agent's mean (the ledger's prior: 1 s); h1 is charged as much ...
    item, decision = q.pop(0.0)
    assert item == "h1" and q._deficit == {"heavy": 0.0, "light": 1.0}  # type: ignore[attr-defined]
    q.finished(Admission("agent", "h1", "heavy"), decision, 9.0)  # ... and 8 s more when done
    assert q._deficit["heavy"] == pytest.approx(-8.0)  # type: ignore[attr-defined]
    item, decision = q.pop(0.0)  # light's turn, charged the agent's mean (now 9 s)
    assert item == "l1" and q._deficit["light"] == pytest.approx(-8.0)  # type: ignore[attr-defined]
    q.finished(Admission("agent", "l1", "light"), decision, None)  # never ran: refunded
    assert q._deficit["light"] == pytest.approx(1.0)  # type: ignore[attr-defined]
    assert not q._charged  # type: ignore[attr-defined]
    assert [q.pop(0.0)[0] for _ in range(2)] == ["l2", "h2"]


def test_handlers_that_take_no_measurable_time_keep_the_tenants_taking_turns() -> None:
    """On a virtual clock (or a coarse one) service times are 0: a round must still be worth
    something, or popping would divide by zero or spin."""
    q = make_queue(PolicySpec("drr"), "agent", Ledger())
    for i in range(40):
        for tenant in ("a", "b"):
            q.push(f"{tenant}{i}", Admission("agent", f"{tenant}{i}", tenant), 0.0)
    served = []
    while q:
        item, decision = q.pop(0.0)
        served.append(item[0])
        q.finished(Admission("agent", item, item[0]), decision, 0.0)
    assert len(served) == 80
    assert abs(served[:40].count("a") - served[:40].count("b")) <= 2  # turns, not one tenant


def test_unknown_charge_is_refused() -> None:
    with pytest.raises(ConfigError, match="charge"):
        make_queue(PolicySpec("drr", charge="bytes"), "a", Ledger())  # type: ignore[arg-type]


reg = TypeRegistry()


@artifact("dt.Job", registry=reg)
class Job(BaseModel):
    cost: float


@artifact("dt.Done", registry=reg)
class Done(BaseModel):
    cost: float


@pytest.mark.parametrize("charge", ["records", "time"])
def test_runner_shares_handler_time_by_tenant_in_virtual_time(charge: str) -> None:
    app = App(registry=reg)
    served: defaultdict[str, float] = defaultdict(float)

    @app.agent(consumes=Job, publishes=Done, concurrency=2, breaker=None)
    async def worker(job: Job, ctx: Context) -> Done:
        await asyncio.sleep(job.cost)  # virtual seconds
        served[ctx.envelope.tenant] += job.cost
        return Done(cost=job.cost)

    tb = TestBoard(app, partitions=1)
    tb.worker = Worker(app, tb.board, FAST_SETTINGS, policy=PolicySpec("drr", charge=charge))  # type: ignore[arg-type]
    tb.board.ensure_topics(app.types())
    for _ in range(300):  # both backlogged for the whole run
        tb.publish(Job(cost=COST["heavy"]), partition_key="k", tenant="heavy")
        tb.publish(Job(cost=COST["light"]), partition_key="k", tenant="light")

    async def main() -> None:
        async with tb:
            await asyncio.sleep(200.0)

    run_virtual(main)
    heavy = served["heavy"] / (served["heavy"] + served["light"])
    if charge == "time":
        assert 0.45 <= heavy <= 0.55, served
    else:
        assert heavy >= 0.75, served  # one per record: heavy gets ~4/5 of the time
