"""How an agent retries a failing handler: attempts, capped exponential backoff with jitter,
which exceptions are worth another try, and a time limit per call (docs/DESIGN.md §5)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from blackboard.errors import AgentError, UnretryableError

#: How a retry's backoff is spread: uniformly in [0, backoff] (``full``) or not at all.
Jitter = Literal["full", "none"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of one record's handler, in process, before it is dead-lettered.

    Attributes:
        max_attempts: handler calls per delivery of a record (1 = no retry).
        backoff_ms: wait before the second attempt; each later wait doubles ...
        max_backoff_ms: ... up to this cap.
        jitter: "full" waits a uniform random time in [0, backoff] (AWS "full jitter", which
            spreads retries of many records apart); "none" waits exactly the backoff.
        retry_on: exception classes worth another attempt (subclasses included); anything
            else is dead-lettered at once.
        no_retry_on: exception classes never retried, even if ``retry_on`` matches (by
            default :class:`~blackboard.errors.UnretryableError`: an undeclared output, a
            record that cannot join).
        timeout_s: longest a handler call may run; a call over it is cancelled and counts as
            a failed attempt (dead-letter stage ``timeout``). None: no limit.
    """

    max_attempts: int = 3
    backoff_ms: float = 200.0
    max_backoff_ms: float = 10_000.0
    jitter: Jitter = "full"
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    no_retry_on: tuple[type[BaseException], ...] = field(default=(UnretryableError,))
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise AgentError(f"retry max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_ms < 0 or self.max_backoff_ms < self.backoff_ms:
            raise AgentError(
                f"retry backoff must satisfy 0 <= backoff_ms ({self.backoff_ms}) <= "
                f"max_backoff_ms ({self.max_backoff_ms})"
            )
        if self.jitter not in ("full", "none"):
            raise AgentError(f"retry jitter must be 'full' or 'none', got {self.jitter!r}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise AgentError(f"retry timeout_s must be > 0, got {self.timeout_s}")

    def retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt (an error whose ``retryable`` attribute
        is False, such as :class:`~blackboard.errors.LLMRequestError`, never is)."""
        return (
            isinstance(error, self.retry_on)
            and not isinstance(error, self.no_retry_on)
            and getattr(error, "retryable", True) is not False
        )

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_backoff_ms, self.backoff_ms * 2.0 ** max(0, attempt - 1)) / 1000.0
        if self.jitter == "none":
            return ceiling
        return float((rng or random).uniform(0.0, ceiling))


#: What an agent gets unless it says otherwise: three attempts, 0.2 s → 10 s backoff.
DEFAULT_RETRY = RetryPolicy()
