"""``fifo``: records run in the order they were admitted (the runner's behaviour without a
policy)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import TypeVar

from scheduler.base import Admission, Decision, ReadyQueue, Ticket
from scheduler.ledger import Ledger

T = TypeVar("T")


class FifoQueue(ReadyQueue[T]):
    """First admitted, first run."""

    name = "fifo"

    def __init__(self, agent: str, ledger: Ledger) -> None:
        super().__init__(agent, ledger)
        self._queue: deque[Ticket[T]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def push_ticket(self, ticket: Ticket[T], now: float) -> None:
        self._queue.append(ticket)

    def pop_ticket(self, now: float) -> Ticket[T]:
        return self._queue.popleft()

    def tickets(self) -> Iterator[Ticket[T]]:
        return iter(self._queue)

    def remove_tickets(self, pred: Callable[[Ticket[T]], bool]) -> list[Ticket[T]]:
        gone = [t for t in self._queue if pred(t)]
        if gone:
            self._queue = deque(t for t in self._queue if not pred(t))
        return gone


#: The decision of every record a :class:`PlainFifoQueue` releases (no position is kept).
ARRIVAL_ORDER = Decision("fifo", "admitted", "arrival", -1)


class PlainFifoQueue(ReadyQueue[T]):
    """``fifo`` for a worker that keeps no service statistics (every agent fifo): a bare
    deque, with no ticket, admission or decision made per record."""

    name = "fifo"

    def __init__(self, agent: str, ledger: Ledger) -> None:
        super().__init__(agent, ledger)
        self._items: deque[T] = deque()

    def push(self, item: T, info: Admission | None, now: float) -> None:
        """Queue ``item`` last (``info`` is not needed)."""
        self._items.append(item)

    def pop(self, now: float) -> tuple[T, Decision]:
        """The oldest queued record."""
        return self._items.popleft(), ARRIVAL_ORDER

    def finished(self, info: Admission, decision: Decision, service_s: float | None) -> None:
        """Nothing to record."""

    def drop(self, gone: Callable[[T], bool]) -> None:
        """Remove the records ``gone`` selects."""
        if any(gone(i) for i in self._items):
            self._items = deque(i for i in self._items if not gone(i))

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def push_ticket(self, ticket: Ticket[T], now: float) -> None:
        raise NotImplementedError

    def pop_ticket(self, now: float) -> Ticket[T]:  # pragma: no cover - pop overrides
        raise NotImplementedError

    def tickets(self) -> Iterator[Ticket[T]]:  # pragma: no cover - __iter__ overrides
        raise NotImplementedError

    def remove_tickets(
        self, pred: Callable[[Ticket[T]], bool]
    ) -> list[Ticket[T]]:  # pragma: no cover
        raise NotImplementedError
