"""``join_aware``: records that complete a pending join first, then the least remaining work
of the record's whole correlation id.

A join agent's runner tells whether a record completes the join its key holds (the parts in
``bb.join:<key>`` plus this one make the set). Any other agent's records are ordered by the
work their correlation id still has queued or running in this worker (the shared ledger), plus
their own estimate: in a fan-out the last siblings of a job — the ones a join downstream waits
for — go before a new job's first ones, so jobs finish one after another instead of together.
"""

from __future__ import annotations

from typing import TypeVar

from scheduler.base import Ticket
from scheduler.heap import Key
from scheduler.srpt import SrptQueue

T = TypeVar("T")


class JoinAwareQueue(SrptQueue[T]):
    """Join completions first, then the least remaining work of the correlation id."""

    name = "join_aware"

    def key(self, ticket: Ticket[T], now: float) -> Key:
        own = self.estimate(ticket)
        ticket.estimate_s = own
        if ticket.info.completes_join:
            ticket.why = "completes-join"
            return (0.0, own)
        ticket.why = "least-remaining-of-job"
        return (1.0, self.ledger.outstanding_work(ticket.info.correlation_id) + own)

    def current_key(self, ticket: Ticket[T], now: float) -> Key | None:
        # Siblings queued after this record, or finished since, change its job's remaining work.
        if ticket.info.completes_join:
            return None
        return (1.0, self.ledger.outstanding_work(ticket.info.correlation_id))
