"""``fifo``: records run in the order they were admitted (the runner's behaviour without a
policy)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import TypeVar

from scheduler.base import ReadyQueue, Ticket
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

    def _push(self, ticket: Ticket[T], now: float) -> None:
        self._queue.append(ticket)

    def _pop(self, now: float) -> Ticket[T]:
        return self._queue.popleft()

    def _tickets(self) -> Iterator[Ticket[T]]:
        return iter(self._queue)

    def _remove_if(self, pred: Callable[[Ticket[T]], bool]) -> list[Ticket[T]]:
        gone = [t for t in self._queue if pred(t)]
        if gone:
            self._queue = deque(t for t in self._queue if not pred(t))
        return gone
