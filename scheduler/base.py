"""What every ready-queue policy shares: what the runner says about a record, the decision a
policy makes, and the queue interface the runner uses (push / pop / len / drop).

A policy decides which *admitted* record runs next when a handler slot frees. The runner pushes
each admitted record with an :class:`Admission` (who it belongs to, what a policy may read) and
pops the next one with the :class:`Decision` that picked it; the decision ends up on the
record's process span (``bb.policy.decision``).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from scheduler.ledger import Ledger

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Admission:
    """What a policy may know about one admitted record.

    Attributes:
        agent: the agent that will run it.
        correlation_id: the work item (job) it belongs to.
        tenant: whose work it is (``envelope.tenant``).
        artifact_type: the record's artifact type name.
        payload: the decoded payload (estimators may read it).
        completes_join: running it completes a pending join (join agents only).
    """

    agent: str
    correlation_id: str
    tenant: str = "default"
    artifact_type: str = ""
    payload: Any = None
    completes_join: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """Why a record ran when it did.

    Attributes:
        policy: the policy's name (``drr+srpt`` for composed ones).
        verdict: ``admitted`` (ran in arrival order) or ``deferred`` (later records ran first).
        why: the rule that ordered it (``arrival``, ``shortest-remaining``, ...).
        position: how many records were queued ahead of it when it arrived.
        overtaken: how many records started between its arrival and its start beyond those.
        estimate_s: the estimate the policy used (None: none).
    """

    policy: str
    verdict: str
    why: str
    position: int
    overtaken: int = 0
    estimate_s: float | None = None

    def __str__(self) -> str:
        text = f"{self.verdict} {self.policy} why={self.why}"
        if self.position >= 0:  # -1: the queue keeps no positions (plain fifo)
            text += f" pos={self.position}"
        if self.overtaken:
            text += f" overtaken={self.overtaken}"
        if self.estimate_s is not None:
            text += f" est={self.estimate_s:.6g}s"
        return text


@dataclass(slots=True)
class Ticket(Generic[T]):
    """One queued record: the runner's item and what the policy noted at push time."""

    item: T
    info: Admission
    seq: int
    position: int
    pops_at_push: int
    estimate_s: float | None = None
    why: str = "arrival"
    extra: dict[str, float] = field(default_factory=dict)


class ReadyQueue(ABC, Generic[T]):
    """The ready queue of one runner: admitted records waiting for a handler slot.

    Args:
        agent: the agent whose records it holds.
        ledger: service statistics shared by the runners of one worker.
    """

    name = "base"

    def __init__(self, agent: str, ledger: Ledger) -> None:
        self.agent = agent
        self.ledger = ledger
        self._seq = itertools.count()
        self._pops = 0

    # -- the interface the runner uses ------------------------------------------------------
    def push(self, item: T, info: Admission, now: float) -> None:
        """Queue ``item`` (admitted at ``now``, in seconds of the loop's clock)."""
        ticket = Ticket(item, info, next(self._seq), len(self), self._pops)
        self.push_ticket(ticket, now)
        self.ledger.queued(info, ticket.estimate_s)

    def pop(self, now: float) -> tuple[T, Decision]:
        """The record to run next and why.

        Raises:
            IndexError: the queue is empty.
        """
        ticket = self.pop_ticket(now)
        self._pops += 1
        started_before = self._pops - 1 - ticket.pops_at_push
        overtaken = max(0, started_before - ticket.position)
        decision = Decision(
            self.name,
            "deferred" if overtaken else "admitted",
            ticket.why,
            ticket.position,
            overtaken,
            ticket.estimate_s,
        )
        return ticket.item, decision

    def finished(self, info: Admission, decision: Decision, service_s: float | None) -> None:
        """A popped record is done with (``service_s``: its handler's time; None if it never
        ran, e.g. its partition moved): feeds the shared ledger."""
        if service_s is not None:
            self.ledger.observe(info, service_s)
        self.ledger.dequeued(info, decision.estimate_s)

    def drop(self, gone: Callable[[T], bool]) -> None:
        """Remove every queued record for which ``gone`` is true (partitions lost or rewound)."""
        for ticket in self.remove_tickets(lambda t: gone(t.item)):
            self.ledger.dequeued(ticket.info, ticket.estimate_s)

    def __iter__(self) -> Iterator[T]:
        return (t.item for t in self.tickets())

    def __bool__(self) -> bool:
        return len(self) > 0

    @abstractmethod
    def __len__(self) -> int: ...

    # -- what a policy implements (a composite policy calls its inner queues' too) --------------
    @abstractmethod
    def push_ticket(self, ticket: Ticket[T], now: float) -> None:
        """Queue ``ticket``."""

    @abstractmethod
    def pop_ticket(self, now: float) -> Ticket[T]:
        """Take out the ticket to run next (the queue is not empty)."""

    @abstractmethod
    def tickets(self) -> Iterator[Ticket[T]]:
        """Every queued ticket, in no particular order."""

    @abstractmethod
    def remove_tickets(self, pred: Callable[[Ticket[T]], bool]) -> list[Ticket[T]]:
        """Take out and return the tickets ``pred`` is true for."""
