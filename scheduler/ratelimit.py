"""Token-bucket rate limits of one agent: requests per second (one token per handler call)
and, for LLM agents, tokens per second as handlers report them (``ctx.report_tokens(n)``).

State is in memory, per runner; time is the event loop's clock (virtual in the simulator).
A token bucket may go into debt (a call reports more tokens than are left): the next call
waits until it is paid back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blackboard.errors import ConfigError


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked.

    Raises:
        ConfigError: a rate or burst that is not positive.
    """

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    updated: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst <= 0:
            raise ConfigError("a rate limit needs rate > 0 and burst > 0")
        if self.tokens < 0:
            self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        if self.updated is None or now > self.updated:
            self.updated = now

    def wait_s(self, now: float, need: float = 1.0) -> float:
        """Seconds until ``need`` tokens are available (0: now)."""
        self._refill(now)
        short = min(need, self.burst) - self.tokens
        if need == 0:  # wait only while in debt
            short = -self.tokens
        return 0.0 if short <= 0 else short / self.rate

    def take(self, now: float, amount: float = 1.0) -> None:
        """Spend ``amount`` tokens (the balance may go negative: debt)."""
        self._refill(now)
        self.tokens -= amount


@dataclass(frozen=True, slots=True)
class RateLimit:
    """An agent's limits: ``requests_per_s`` calls and ``tokens_per_s`` reported tokens.

    Attributes:
        requests_per_s: handler calls per second (None: unlimited).
        tokens_per_s: reported tokens per second (None: unlimited).
        burst_s: how many seconds' worth of either may be spent at once.
    """

    requests_per_s: float | None = None
    tokens_per_s: float | None = None
    burst_s: float = 1.0

    def limiter(self) -> RateLimiter:
        """Fresh in-memory buckets for one runner."""
        return RateLimiter(
            self._bucket(self.requests_per_s), self._bucket(self.tokens_per_s)
        )

    def _bucket(self, rate: float | None) -> TokenBucket | None:
        return None if rate is None else TokenBucket(rate, max(1.0, rate * self.burst_s))


@dataclass(slots=True)
class RateLimiter:
    """The buckets of one runner (in memory)."""

    requests: TokenBucket | None
    tokens: TokenBucket | None

    def wait_s(self, now: float) -> float:
        """Seconds until the next call may start (0: now)."""
        wait = 0.0
        if self.requests is not None:
            wait = self.requests.wait_s(now)
        if self.tokens is not None:
            wait = max(wait, self.tokens.wait_s(now, 0.0))
        return wait

    def started(self, now: float) -> None:
        """A call started: spend one request token."""
        if self.requests is not None:
            self.requests.take(now)

    def used_tokens(self, now: float, tokens: float) -> None:
        """A call reported ``tokens`` (spent, possibly into debt)."""
        if self.tokens is not None and tokens > 0:
            self.tokens.take(now, tokens)
