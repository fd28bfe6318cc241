"""``drr``: deficit round robin across tenants (``envelope.tenant``), with weights, over any
other policy: each tenant has its own queue of the inner policy (``drr+srpt``: shortest
remaining first within a tenant), and tenants take turns.

With ``charge="records"``: in each round a tenant's deficit grows by its weight (records it
may start); it starts records while its deficit is positive, each costing one. Over any
stretch in which tenants stay backlogged, tenant ``t`` starts ``weight[t] / Σ weights`` of the
records, within one round's worth; a tenant with nothing queued loses its turn and its deficit
(no credit is banked), so a burst from one tenant waits behind its own queue, not the others'.

``charge="time"`` (the default) charges handler time instead, so a tenant whose records are
expensive does not get more than its weighted share of the handler time: a round is worth
``weight * q`` seconds (``q``: the agent's mean service time from the ledger); a record is
charged its tenant's mean service time when it starts (the agent's mean before the tenant's
first record finished) and, when it finishes, the difference between its measured service
time and that charge, if the tenant is still backlogged (a tenant whose queue emptied starts
afresh, as in plain DRR: carrying the noise of past estimates over idle periods hurt the p99 of
tenants that come and go). A refund never lifts a deficit above one round's worth (the
ledger's mean starts at a prior of 1 s, and a tenant refunded most of that would keep its turn
for thousands of fast records).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Literal, TypeAlias, TypeVar

from scheduler.base import Admission, Decision, ReadyQueue, Ticket
from scheduler.ledger import Ledger

T = TypeVar("T")
#: The least a record is charged, and a round is worth, when charging by time (seconds).
MIN_CHARGE_S = 1e-6

#: What a started record costs its tenant's deficit: one, or its service time.
Charge: TypeAlias = Literal["records", "time"]
#: Weight of a new service time in a tenant's moving mean of record cost (charge="time").
_COST_ALPHA = 0.2


class DrrQueue(ReadyQueue[T]):
    """Weighted fair share across tenants over per-tenant queues of an inner policy.

    Args:
        agent: the agent.
        ledger: shared service statistics.
        inner: makes one tenant's queue (e.g. ``lambda: FifoQueue(agent, ledger)``).
        weights: tenant → weight (default 1 for tenants not named).
        inner_name: the inner policy's name, for decisions.
        charge: ``time`` (measured service time; the default) or ``records`` (one each).
    """

    def __init__(
        self,
        agent: str,
        ledger: Ledger,
        inner: Callable[[], ReadyQueue[T]],
        weights: Mapping[str, float] | None = None,
        inner_name: str = "fifo",
        charge: Charge = "time",
    ) -> None:
        super().__init__(agent, ledger)
        self.name = f"drr+{inner_name}"
        self.charge = charge
        self._by_time = charge == "time"
        self._cost: dict[str, float] = {}  # tenant -> moving mean of its records' service time
        # Records started and not finished: id(decision) -> (decision, tenant, charged).
        self._charged: dict[int, tuple[Decision, str, float]] = {}
        self._last: tuple[str, float] | None = None
        self._make = inner
        self.weights = dict(weights or {})
        self._queues: dict[str, ReadyQueue[T]] = {}
        self._active: deque[str] = deque()
        self._deficit: dict[str, float] = {}
        self._len = 0

    def weight(self, tenant: str) -> float:
        """The tenant's weight (1 unless configured)."""
        return self.weights.get(tenant, 1.0)

    def __len__(self) -> int:
        return self._len

    def push_ticket(self, ticket: Ticket[T], now: float) -> None:
        tenant = ticket.info.tenant
        queue = self._queues.get(tenant)
        if queue is None:
            queue = self._queues[tenant] = self._make()
        if not queue:
            self._active.append(tenant)
            self._deficit[tenant] = 0.0
        queue.push_ticket(ticket, now)
        self._len += 1

    def pop_ticket(self, now: float) -> Ticket[T]:
        if not self._len:
            raise IndexError("pop from an empty ready queue")
        active, deficit = self._active, self._deficit
        quantum = self._quantum() if self._by_time else 1.0
        if self._by_time:
            self._skip_rounds(quantum)
        while deficit[active[0]] <= 0:
            tenant = active[0]
            deficit[tenant] += self.weight(tenant) * quantum
            active.rotate(-1)
        tenant = active[0]
        queue = self._queues[tenant]
        ticket = queue.pop_ticket(now)
        self._len -= 1
        if self._by_time:  # credit given while the mean was larger is worth a round at most
            deficit[tenant] = min(deficit[tenant], self.weight(tenant) * quantum)
        cost = max(self._cost.get(tenant, quantum), MIN_CHARGE_S) if self._by_time else 1.0
        deficit[tenant] -= cost
        self._last = (tenant, cost)
        ticket.why = f"tenant-share:{ticket.why}"
        if not queue:
            active.popleft()
            deficit.pop(tenant, None)
        return ticket

    def _quantum(self) -> float:
        """A round's worth of handler time: the agent's mean service time, at least
        :data:`MIN_CHARGE_S` (handlers that take no measurable time, e.g. on a virtual clock,
        must not make a round worth nothing)."""
        return max(self.ledger.mean_service(self.agent), MIN_CHARGE_S)

    def _skip_rounds(self, quantum: float) -> None:
        """Add at once the whole rounds in which no tenant would get a turn (deep debts
        would otherwise cost a loop turn each)."""
        active, deficit = self._active, self._deficit
        rounds = min(
            math.ceil(-deficit[t] / (self.weight(t) * quantum)) if deficit[t] <= 0 else 0
            for t in active
        )
        if rounds > 1:
            for t in active:
                deficit[t] += (rounds - 1) * self.weight(t) * quantum

    def pop(self, now: float) -> tuple[T, Decision]:
        """See :meth:`ReadyQueue.pop`; notes what the record was charged."""
        item, decision = super().pop(now)
        if self._last is not None and self._by_time:
            tenant, cost = self._last
            self._charged[id(decision)] = (decision, tenant, cost)
        self._last = None
        return item, decision

    def finished(self, info: Admission, decision: Decision, service_s: float | None) -> None:
        """See :meth:`ReadyQueue.finished`; with ``charge="time"`` a backlogged tenant is
        charged the difference between the record's measured service time and what it was
        charged (a record that never ran is refunded)."""
        super().finished(info, decision, service_s)
        charged = self._charged.pop(id(decision), None)
        if charged is None:
            return
        _, tenant, cost = charged
        actual = 0.0 if service_s is None else max(service_s, MIN_CHARGE_S)
        if service_s is not None:
            mean = self._cost.get(tenant)
            self._cost[tenant] = (
                service_s if mean is None else mean + _COST_ALPHA * (service_s - mean)
            )
        if tenant in self._deficit:
            most = self.weight(tenant) * self._quantum()
            self._deficit[tenant] = min(self._deficit[tenant] - (actual - cost), most)

    def tickets(self) -> Iterator[Ticket[T]]:
        for queue in self._queues.values():
            yield from queue.tickets()

    def remove_tickets(self, pred: Callable[[Ticket[T]], bool]) -> list[Ticket[T]]:
        gone: list[Ticket[T]] = []
        for tenant, queue in self._queues.items():
            had = len(queue)
            gone.extend(queue.remove_tickets(pred))
            if had and not queue:
                self._active.remove(tenant)
                self._deficit.pop(tenant, None)
        self._len -= len(gone)
        return gone
