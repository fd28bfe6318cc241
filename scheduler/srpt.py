"""``srpt``: shortest estimated remaining work of the record's correlation id first.

The estimate comes from a user estimator (``estimator(admission, ledger)`` → seconds, e.g. a
token count read from the payload) or, by default, the agent's running mean of service time.
Keys are fixed when a record is queued; ties run in arrival order.
"""

from __future__ import annotations

from typing import TypeVar

from scheduler.base import Ticket
from scheduler.heap import HeapQueue, Key
from scheduler.ledger import Estimator, Ledger, mean_estimator

T = TypeVar("T")


class SrptQueue(HeapQueue[T]):
    """Shortest remaining processing time first.

    Args:
        agent: the agent.
        ledger: shared service statistics.
        estimator: remaining work of a record's correlation id (None: the running mean).
    """

    name = "srpt"

    def __init__(self, agent: str, ledger: Ledger, estimator: Estimator | None = None) -> None:
        super().__init__(agent, ledger)
        self.estimator: Estimator = estimator or mean_estimator

    def estimate(self, ticket: Ticket[T]) -> float:
        """The ticket's remaining work (the running mean when the estimator has none)."""
        found = self.estimator(ticket.info, self.ledger)
        return self.ledger.mean_service(self.agent) if found is None else float(found)

    def key(self, ticket: Ticket[T], now: float) -> Key:
        estimate = self.estimate(ticket)
        ticket.estimate_s = estimate
        ticket.why = "shortest-remaining"
        return (estimate,)
