"""``plas``: least attained service first, with aging so old work is never starved.

A record's priority is the service its correlation id attained so far (all steps run in this
worker, from the shared ledger) minus ``aging`` * the time it has waited. Since every queued
record ages at the same rate, ``attained + aging * admitted_at`` orders them the same at any
moment, so the key is fixed at push time: a record that waited ``d`` seconds longer beats
one whose job attained up to ``aging * d`` seconds less.
"""

from __future__ import annotations

from typing import TypeVar

from scheduler.base import Ticket
from scheduler.heap import HeapQueue, Key
from scheduler.ledger import Ledger

T = TypeVar("T")


class PlasQueue(HeapQueue[T]):
    """Least attained service first, aged.

    Args:
        agent: the agent.
        ledger: shared service statistics.
        aging: seconds of attained service one second of waiting is worth (0: pure LAS,
            which can starve long jobs under load).
    """

    name = "plas"

    def __init__(self, agent: str, ledger: Ledger, aging: float = 0.1) -> None:
        super().__init__(agent, ledger)
        self.aging = aging

    def key(self, ticket: Ticket[T], now: float) -> Key:
        attained = self.ledger.attained(ticket.info.correlation_id)
        ticket.estimate_s = attained
        ticket.why = "least-attained"
        return (attained + self.aging * now,)
