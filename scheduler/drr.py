"""``drr``: deficit round robin across tenants (``envelope.tenant``), with weights, over any
other policy: each tenant has its own queue of the inner policy (``drr+srpt``: shortest
remaining first within a tenant), and tenants take turns.

In each round a tenant's deficit grows by its weight (records it may start); it starts records
while its deficit is positive, each costing one. Over any stretch in which tenants stay
backlogged, tenant ``t`` starts ``weight[t] / Σ weights`` of the records, within one round's
worth; a tenant with nothing queued loses its turn and its deficit (no credit is banked), so
a burst from one tenant waits behind its own queue, not the others'.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from scheduler.base import ReadyQueue, Ticket
from scheduler.ledger import Ledger

T = TypeVar("T")


class DrrQueue(ReadyQueue[T]):
    """Weighted fair share across tenants over per-tenant queues of an inner policy.

    Args:
        agent: the agent.
        ledger: shared service statistics.
        inner: makes one tenant's queue (e.g. ``lambda: FifoQueue(agent, ledger)``).
        weights: tenant → weight (default 1 for tenants not named).
        inner_name: the inner policy's name, for decisions.
    """

    def __init__(
        self,
        agent: str,
        ledger: Ledger,
        inner: Callable[[], ReadyQueue[T]],
        weights: Mapping[str, float] | None = None,
        inner_name: str = "fifo",
    ) -> None:
        super().__init__(agent, ledger)
        self.name = f"drr+{inner_name}"
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

    def _push(self, ticket: Ticket[T], now: float) -> None:
        tenant = ticket.info.tenant
        queue = self._queues.get(tenant)
        if queue is None:
            queue = self._queues[tenant] = self._make()
        if not queue:
            self._active.append(tenant)
            self._deficit[tenant] = 0.0
        queue._push(ticket, now)
        self._len += 1

    def _pop(self, now: float) -> Ticket[T]:
        if not self._len:
            raise IndexError("pop from an empty ready queue")
        active, deficit = self._active, self._deficit
        while deficit[active[0]] <= 0:
            tenant = active[0]
            deficit[tenant] += self.weight(tenant)
            active.rotate(-1)
        tenant = active[0]
        queue = self._queues[tenant]
        ticket = queue._pop(now)
        self._len -= 1
        deficit[tenant] -= 1.0
        ticket.why = f"tenant-share:{ticket.why}"
        if not queue:
            active.popleft()
            deficit.pop(tenant, None)
        return ticket

    def _tickets(self) -> Iterator[Ticket[T]]:
        for queue in self._queues.values():
            yield from queue._tickets()

    def _remove_if(self, pred: Callable[[Ticket[T]], bool]) -> list[Ticket[T]]:
        gone: list[Ticket[T]] = []
        for tenant, queue in self._queues.items():
            had = len(queue)
            gone.extend(queue._remove_if(pred))
            if had and not queue:
                self._active.remove(tenant)
                self._deficit.pop(tenant, None)
        self._len -= len(gone)
        return gone
