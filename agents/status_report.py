"""A runner's status for operators: its circuit breaker's transitions, logged, and its
breaker and backpressure state, published to ``<prefix>._status`` for ``blackboard lag`` and the
dashboard (:mod:`blackboard.status`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from agents.breaker import BreakerState, CircuitBreaker
from blackboard.blackboard import Blackboard
from blackboard.status import AgentStatus, publish_status

if TYPE_CHECKING:
    from scheduler.throttle_hooks import ThrottledLimiter


class StatusReporter:
    """Publishes one runner's status, from a thread (store calls may block the event loop).

    Args:
        board: where the status topic is.
        agent, slot, group: who reports.
        log: the runner's bound logger.
    """

    def __init__(self, board: Blackboard, agent: str, slot: str, group: str, log: Any) -> None:
        self.board = board
        self.agent = agent
        self.slot = slot
        self.group = group
        self._log = log
        self._tasks: set[asyncio.Task[None]] = set()

    def breaker_changed(self, state: BreakerState, breaker: CircuitBreaker) -> None:
        """Log a breaker transition (the caller publishes the status when it matters)."""
        if state == "open":
            self._log.warning(
                "circuit open: pausing the agent",
                consecutive_failures=breaker.consecutive_failures,
                cooldown_s=breaker.cooldown_s,
            )
        else:
            self._log.info("circuit " + state.replace("_", "-"))

    def report(self, breaker: CircuitBreaker | None, throttle: ThrottledLimiter | None) -> None:
        """Publish the breaker and backpressure state (nothing when the agent has neither)."""
        if breaker is None and throttle is None:
            return
        status = AgentStatus(
            agent=self.agent,
            slot=self.slot,
            group=self.group,
            breaker=breaker.state if breaker is not None else "",
            consecutive_failures=breaker.consecutive_failures if breaker is not None else 0,
            cooldown_s=breaker.cooldown_s if breaker is not None else 0.0,
            opens=breaker.opens if breaker is not None else 0,
            throttle=throttle.backpressure.report() if throttle is not None else {},
        )
        task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(publish_status, self.board, status)
        )
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.warning("could not publish the agent status", error=str(task.exception()))
