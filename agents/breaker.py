"""A circuit breaker per agent: after K consecutive failed handler calls the agent stops
starting handlers for a cool-down instead of dead-lettering its whole backlog while a
dependency is down; then one trial call decides (closed again, or open for longer)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from blackboard.errors import AgentError

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When the breaker opens and for how long.

    Attributes:
        failures: consecutive failed handler calls (attempts, across records) that open it.
            Keep it above the retry policy's ``max_attempts``, so one poison record alone
            cannot open it.
        cooldown_s: the first open period; each failed trial doubles it ...
        max_cooldown_s: ... up to this cap.
    """

    failures: int = 5
    cooldown_s: float = 5.0
    max_cooldown_s: float = 300.0

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise AgentError(f"breaker failures must be >= 1, got {self.failures}")
        if self.cooldown_s <= 0 or self.max_cooldown_s < self.cooldown_s:
            raise AgentError(
                f"breaker cool-down must satisfy 0 < cooldown_s ({self.cooldown_s}) <= "
                f"max_cooldown_s ({self.max_cooldown_s})"
            )


class CircuitBreaker:
    """The state machine: closed → open (K failures) → half-open (cool-down over, one trial
    call at a time) → closed (trial succeeded) or open again with twice the cool-down.

    Args:
        policy: thresholds.
        on_change: called with the new state and the breaker after every transition.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        policy: BreakerPolicy,
        on_change: Callable[[BreakerState, CircuitBreaker], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.state: BreakerState = "closed"
        self.consecutive_failures = 0
        self.cooldown_s = policy.cooldown_s
        self.opened_at = 0.0
        self.opens = 0
        self._trial = False
        self._on_change = on_change
        self._clock = clock

    def allow(self) -> bool:
        """Whether a handler call may start now (a half-open breaker lets one through)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self._clock() < self.opened_at + self.cooldown_s:
                return False
            self._set("half_open")
        if self._trial:
            return False
        self._trial = True
        return True

    def wait_s(self) -> float:
        """Seconds until :meth:`allow` may say yes (0 when it may now)."""
        if self.state == "open":
            return max(0.0, self.opened_at + self.cooldown_s - self._clock())
        return 0.0

    def succeeded(self) -> None:
        """A handler call succeeded."""
        self.consecutive_failures = 0
        if self.state == "half_open":
            self._trial = False
            self.cooldown_s = self.policy.cooldown_s
            self._set("closed")

    def failed(self) -> None:
        """A handler call failed (raised or timed out)."""
        self.consecutive_failures += 1
        if self.state == "half_open":
            self._trial = False
            self.cooldown_s = min(self.cooldown_s * 2, self.policy.max_cooldown_s)
            self._open()
        elif self.state == "closed" and self.consecutive_failures >= self.policy.failures:
            self._open()

    def trip(self) -> None:
        """Open now, whatever the count (a provider said the quota is exhausted: every call
        would fail the same way)."""
        if self.state != "open":
            self.consecutive_failures = max(self.consecutive_failures, self.policy.failures)
            self._trial = False
            self._open()

    def released(self) -> None:
        """A trial call ended without a verdict (cancelled, or its partition moved)."""
        self._trial = False

    def _open(self) -> None:
        self.opened_at = self._clock()
        self.opens += 1
        self._set("open")

    def _set(self, state: BreakerState) -> None:
        self.state = state
        if self._on_change is not None:
            self._on_change(state, self)
