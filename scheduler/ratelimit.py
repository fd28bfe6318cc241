"""Token-bucket rate limits of one agent: requests per second (one token per handler call)
and, for LLM agents, tokens per second as handlers report them (``ctx.report_tokens(n)``).

By default the state is in memory, per runner; time is the event loop's clock (virtual in the
simulator). With ``RateLimit(shared="redis://host:port/db")`` (or ``BLACKBOARD_RATE_LIMIT_URL``
in the worker's environment) the buckets live in Redis and every worker of the agent shares
them (:mod:`scheduler.ratelimit_redis`). A token bucket may go into debt (a call reports more
tokens than are left): the next call waits until it is paid back.

The runner sees one synchronous interface whichever the backend (:class:`Limiter`):
``wait_s(now)`` before it starts a handler, ``started(now)`` when it does, ``used_tokens(now,
n)`` when a call reported tokens; ``open()`` and ``close()`` around its run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from blackboard.envsettings import EnvSettings
from blackboard.errors import ConfigError
from blackboard.redact import redact_url
from blackboard.stores import is_embedded

if TYPE_CHECKING:
    from scheduler.ratelimit_redis import RedisRateLimiter


class Limiter(Protocol):
    """What the runner calls: the buckets of one agent as one runner sees them."""

    def wait_s(self, now: float) -> float:
        """Seconds until the next call may start (0: now).

        Raises:
            StoreUnavailableError: a shared limit whose Redis stayed unreachable.
        """
        ...

    def started(self, now: float) -> None:
        """A call started: spend one request token."""
        ...

    def used_tokens(self, now: float, tokens: float) -> None:
        """A call reported ``tokens`` (spent, possibly into debt). Negative gives back part of
        a reservation made before a call (a shared limit only lowers what it still owes)."""
        ...

    def hold(self, now: float, seconds: float) -> None:
        """Start no call for ``seconds`` (a provider answered 429 with ``Retry-After``)."""
        ...

    async def open(self) -> None:
        """Connect (shared limits); called once before the first call."""
        ...

    async def close(self) -> None:
        """Give back what is unused and disconnect; called once when the runner stops."""
        ...


class RateLimitSettings(EnvSettings):
    """The worker's default for where rate-limit state is shared, for agents whose
    :class:`RateLimit` does not say (:meth:`from_env`: ``BLACKBOARD_RATE_LIMIT_URL``)."""

    model_config = SettingsConfigDict(env_prefix="BLACKBOARD_RATE_LIMIT_")
    what = "rate limit setting"

    url: str | None = Field(
        default=None,
        description="a `redis://` URL every worker of an agent shares its buckets through "
        "(unset: each runner keeps its buckets in memory)",
    )


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
        """Spend ``amount`` tokens (the balance may go negative: debt); a negative amount
        gives tokens back (a reservation that was too large), up to ``burst``."""
        self._refill(now)
        self.tokens = min(self.burst, self.tokens - amount)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """An agent's limits: ``requests_per_s`` calls and ``tokens_per_s`` reported tokens.

    Attributes:
        requests_per_s: handler calls per second (None: unlimited).
        tokens_per_s: reported tokens per second (None: unlimited).
        burst_s: how many seconds' worth of either may be spent at once.
        shared: where the buckets live: ``redis://host:port/db`` (one pair of buckets per
            agent in Redis, shared by every worker of the agent), ``memory://`` (per runner,
            in memory), or None: ``BLACKBOARD_RATE_LIMIT_URL`` if the worker's environment
            sets it, else in memory.
        lease_s: shared limits: a runner takes request tokens from Redis in leases of this
            many seconds' worth (at least one token), so it asks Redis about once per lease,
            not once per call; smaller leases share more evenly, larger ones ask less often.
    """

    requests_per_s: float | None = None
    tokens_per_s: float | None = None
    burst_s: float = 1.0
    shared: str | None = None
    lease_s: float = 0.1

    def __post_init__(self) -> None:
        if self.burst_s <= 0 or self.lease_s <= 0:
            raise ConfigError("a rate limit needs burst_s > 0 and lease_s > 0")

    def limiter(self, scope: str = "") -> Limiter:
        """Fresh buckets for one runner of the agent ``scope`` names (the consumer group,
        ``<prefix>.<agent>``: the runners of one agent share the buckets in Redis).

        Raises:
            ConfigError: a ``shared`` URL that is neither ``redis://`` nor ``memory://``.
            MissingDependencyError: a shared limit without the ``redis`` package.
        """
        url = self.shared if self.shared is not None else RateLimitSettings.from_env().url
        if url is None or is_embedded(url):
            return RateLimiter(self._bucket(self.requests_per_s), self._bucket(self.tokens_per_s))
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                "a rate limit is shared through redis:// (or kept in memory://), "
                f"not {redact_url(url)!r}"
            )
        return _redis_limiter(self, url, scope)

    def burst(self, rate: float) -> float:
        """The most tokens of a bucket of ``rate`` per second banked at once."""
        return max(1.0, rate * self.burst_s)

    def _bucket(self, rate: float | None) -> TokenBucket | None:
        return None if rate is None else TokenBucket(rate, self.burst(rate))


def _redis_limiter(limit: RateLimit, url: str, scope: str) -> RedisRateLimiter:
    try:
        from scheduler.ratelimit_redis import RedisRateLimiter
    except ImportError as exc:  # the redis package is an optional extra
        from blackboard.errors import MissingDependencyError

        raise MissingDependencyError(
            "a rate limit shared in Redis needs the redis package: pip install redis"
        ) from exc
    return RedisRateLimiter(limit, url, scope)


@dataclass(slots=True)
class RateLimiter:
    """The buckets of one runner (in memory); a :class:`Limiter`."""

    requests: TokenBucket | None
    tokens: TokenBucket | None
    held_until: float = 0.0

    def wait_s(self, now: float) -> float:
        """Seconds until the next call may start (0: now)."""
        wait = self.held_until - now if self.held_until > now else 0.0
        if self.requests is not None:
            wait = max(wait, self.requests.wait_s(now))
        if self.tokens is not None:
            wait = max(wait, self.tokens.wait_s(now, 0.0))
        return wait

    def started(self, now: float) -> None:
        """A call started: spend one request token."""
        if self.requests is not None:
            self.requests.take(now)

    def used_tokens(self, now: float, tokens: float) -> None:
        """A call reported ``tokens`` (spent, possibly into debt; negative: given back)."""
        if self.tokens is not None and tokens != 0:
            self.tokens.take(now, tokens)

    def hold(self, now: float, seconds: float) -> None:
        """Start no call for ``seconds``."""
        self.held_until = max(self.held_until, now + seconds)

    async def open(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Nothing to give back."""
