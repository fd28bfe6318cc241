"""A ready queue ordered by a priority key computed when a record is pushed (smaller first,
arrival order among equals): the base of ``srpt``, ``plas`` and ``join_aware``."""

from __future__ import annotations

import heapq
from abc import abstractmethod
from collections.abc import Callable, Iterator
from typing import TypeVar

from scheduler.base import ReadyQueue, Ticket
from scheduler.ledger import Ledger

T = TypeVar("T")
Key = tuple[float, ...]


class HeapQueue(ReadyQueue[T]):
    """Records in a binary heap of ``(key, seq)``: O(log n) push and pop."""

    def __init__(self, agent: str, ledger: Ledger) -> None:
        super().__init__(agent, ledger)
        self._heap: list[tuple[Key, int, Ticket[T]]] = []

    def __len__(self) -> int:
        return len(self._heap)

    @abstractmethod
    def key(self, ticket: Ticket[T], now: float) -> Key:
        """The ticket's priority (smaller runs first); may set ``ticket.why`` and
        ``ticket.estimate_s``."""

    def push_ticket(self, ticket: Ticket[T], now: float) -> None:
        heapq.heappush(self._heap, (self.key(ticket, now), ticket.seq, ticket))

    def current_key(self, ticket: Ticket[T], now: float) -> Key | None:
        """The ticket's key now, for policies whose keys drift while records wait (None: the
        key from push time still holds)."""
        return None

    def pop_ticket(self, now: float) -> Ticket[T]:
        heap = self._heap
        # Lazy re-keying: the top is checked against its current key; if that is now worse than
        # the next record's, it goes back with the new key (each record at most once per pop).
        for _ in range(len(heap)):
            key, seq, ticket = heap[0]
            fresh = self.current_key(ticket, now)
            if fresh is None or fresh == key:
                break
            heapq.heapreplace(heap, (fresh, seq, ticket))
            if heap[0][2] is ticket:
                break
        return heapq.heappop(heap)[2]

    def tickets(self) -> Iterator[Ticket[T]]:
        return (entry[2] for entry in self._heap)

    def remove_tickets(self, pred: Callable[[Ticket[T]], bool]) -> list[Ticket[T]]:
        gone = [e[2] for e in self._heap if pred(e[2])]
        if gone:
            self._heap = [e for e in self._heap if not pred(e[2])]
            heapq.heapify(self._heap)
        return gone
