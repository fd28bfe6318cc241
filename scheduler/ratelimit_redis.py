"""Rate limits shared in Redis: the token buckets of one agent kept in Redis, so every worker
of the agent draws on one limit (``RateLimit(shared="redis://host:port/db")``).

Each bucket is a hash ``bb:rl:<prefix>.<agent>:requests`` (or ``:tokens``) with its balance and
the time it was last refilled. One Lua script (:data:`TAKE`) does a whole step atomically:
refill by Redis ``TIME`` (one clock for every worker), pay a debt in, take up to N whole tokens
out, and answer what it granted and the balance left.

The runner keeps its synchronous interface (``wait_s`` / ``started`` / ``used_tokens``): a
runner leases request tokens in small chunks (``lease_s`` seconds' worth) and spends them
locally; a background task tops the lease up before it runs out, and while the shared bucket is
empty it asks again when the bucket should have refilled. Reported tokens (``ctx.report_tokens``)
are spent locally at once and paid into the shared bucket by the same task; while the shared
bucket is in debt no call starts. What a lease holds is taken out of the shared bucket, so all
workers together never start more than ``burst + rate * t`` calls in ``t`` seconds, however
the leases are spread; on close a runner gives back what its lease still holds.

Redis unreachable: :meth:`RedisRateLimiter.open` raises :class:`StoreUnavailableError`; while a
running limiter cannot reach Redis it grants nothing (calls wait), and once it has failed for
``UNAVAILABLE_S`` the next ``wait_s`` raises the error, which stops the runner — a limit is
never silently lifted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import TYPE_CHECKING

import redis.asyncio
from redis.exceptions import RedisError

from blackboard.aio import cancel_and_wait
from blackboard.errors import ConfigError, StoreUnavailableError
from blackboard.redact import redact_url

if TYPE_CHECKING:
    from scheduler.ratelimit import RateLimit

#: KEYS[1] the bucket; ARGV: rate, burst, want (whole tokens), pay (may be negative: give
#: back), ttl in ms. Returns {granted, balance} as strings (Lua numbers would be truncated).
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, pay = tonumber(ARGV[3]), tonumber(ARGV[4])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(v[1]), tonumber(v[2])
if tokens == nil or ts == nil then tokens = burst; ts = now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate); ts = now end
tokens = math.min(burst, tokens - pay)
local granted = 0
if want > 0 and tokens >= 1 then
  granted = math.min(want, math.floor(tokens))
  tokens = tokens - granted
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts',
  string.format('%.17g', ts))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]))
return {tostring(granted), string.format('%.17g', tokens)}
"""

#: How long a running limiter keeps trying an unreachable Redis (granting nothing) before the
#: runner is stopped with the error.
UNAVAILABLE_S = 5.0
#: Shortest and longest wait the limiter asks the runner for while it waits on Redis.
_MIN_WAIT_S = 0.002
_MAX_WAIT_S = 1.0


def bucket_key(scope: str, kind: str) -> str:
    """The Redis key of one shared bucket: ``bb:rl:<prefix>.<agent>:<kind>``."""
    return f"bb:rl:{scope}:{kind}"


class _Shared:
    """What one runner knows of one shared bucket."""

    __slots__ = ("at", "balance", "burst", "chunk", "debt", "key", "lease", "rate")

    def __init__(self, key: str, rate: float, burst: float, lease_s: float) -> None:
        self.key = key
        self.rate = rate
        self.burst = burst
        self.balance = 0.0  # the shared balance at the last answer from Redis
        self.at = -math.inf  # the loop time of that answer
        self.lease = 0.0  # requests: tokens taken out of Redis, not yet spent here
        self.debt = 0.0  # tokens: spent here, not yet paid into Redis
        self.chunk = float(max(1, math.floor(min(burst, rate * lease_s))))

    def refill_wait(self, now: float, need: float) -> float:
        """Seconds until the shared balance (as last seen) reaches ``need``, given its rate."""
        have = min(self.burst, self.balance + max(0.0, now - self.at) * self.rate)
        return max(0.0, (need - have) / self.rate)


class RedisRateLimiter:
    """The shared buckets of one agent, as one runner sees them (a :class:`Limiter`).

    Args:
        limit: the agent's rates and burst.
        url: the Redis holding the buckets (``redis://host:port/db``).
        scope: the agent's consumer group (``<prefix>.<agent>``), which names the buckets.

    Raises:
        ConfigError: a URL redis-py cannot parse.
    """

    def __init__(self, limit: RateLimit, url: str, scope: str) -> None:
        self.url = url
        self._shown = shown = redact_url(url)  # messages and task names never show a password
        self._ttl_ms = int(1000 * max(60.0, 10 * limit.burst_s))
        self.requests = self._shared(scope, "requests", limit.requests_per_s, limit)
        self.tokens = self._shared(scope, "tokens", limit.tokens_per_s, limit)
        try:
            self._client = redis.asyncio.Redis.from_url(url, protocol=2)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"bad rate-limit Redis URL {shown!r}: {exc}") from exc
        self._script = self._client.register_script(TAKE)
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None
        self._held_until = 0.0

    @staticmethod
    def _shared(scope: str, kind: str, rate: float | None, limit: RateLimit) -> _Shared | None:
        if rate is None:
            return None
        return _Shared(bucket_key(scope, kind), rate, limit.burst(rate), limit.lease_s)

    # -- life cycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Reach Redis, take the first lease and start the background refills.

        Raises:
            StoreUnavailableError: Redis cannot be reached.
        """
        try:
            await self._client.ping()
            await self._sync()
        except (RedisError, OSError) as exc:
            await self._client.aclose()
            raise StoreUnavailableError(
                f"cannot reach the rate-limit Redis at {self._shown}: {exc}",
                code="CONNECTION",
                retriable=True,
            ) from exc
        self._task = asyncio.create_task(self._refill(), name=f"ratelimit:{self._shown}")

    async def close(self) -> None:
        """Stop refilling, give back the unspent lease, pay what is owed, disconnect."""
        if self._task is not None:
            await cancel_and_wait([self._task])
        with contextlib.suppress(RedisError, OSError):
            if self.requests is not None and self.requests.lease >= 1:
                await self._take(self.requests, 0, -math.floor(self.requests.lease))
                self.requests.lease = 0.0
            if self.tokens is not None and self.tokens.debt > 0:
                await self._take(self.tokens, 0, self.tokens.debt)
                self.tokens.debt = 0.0
        await self._client.aclose()

    # -- what the runner calls (synchronous) --------------------------------------------------
    def wait_s(self, now: float) -> float:
        """Seconds until the next call may start (0: now).

        Raises:
            StoreUnavailableError: Redis stayed unreachable for ``UNAVAILABLE_S``.
        """
        task = self._task
        if task is not None and task.done():
            task.result()  # raises what stopped the refills
        wait = self._held_until - now if self._held_until > now else 0.0
        req = self.requests
        if req is not None and req.lease < 1:
            self._kick.set()
            wait = max(_MIN_WAIT_S, req.refill_wait(now, 1.0))
        tok = self.tokens
        if tok is not None and tok.balance - tok.debt < 0:
            # In debt as Redis last said: wait until a later answer says it is paid back.
            self._kick.set()
            wait = max(wait, _MIN_WAIT_S, tok.refill_wait(now, tok.debt))
        return min(wait, _MAX_WAIT_S)

    def started(self, now: float) -> None:
        """A call started: spend one leased request token (top the lease up when low)."""
        req = self.requests
        if req is not None:
            req.lease -= 1
            if req.lease < req.chunk / 2:
                self._kick.set()

    def used_tokens(self, now: float, tokens: float) -> None:
        """A call reported ``tokens``: owed to the shared bucket (paid in the background)."""
        tok = self.tokens
        if tok is not None and tokens > 0:
            tok.debt += tokens
            self._kick.set()
        elif tok is not None and tokens < 0:  # a reservation too large: owe less, if still owed
            tok.debt = max(0.0, tok.debt + tokens)

    def hold(self, now: float, seconds: float) -> None:
        """Start no call of this runner for ``seconds`` (the other runners hear of their own
        429s: the provider answers each of them)."""
        self._held_until = max(self._held_until, now + seconds)

    # -- talking to Redis -------------------------------------------------------------------
    async def _take(self, bucket: _Shared, want: float, pay: float) -> float:
        """One atomic step on ``bucket``: pay ``pay`` in, take up to ``want``; what it granted."""
        granted, balance = await self._script(
            keys=[bucket.key], args=[bucket.rate, bucket.burst, want, pay, self._ttl_ms]
        )
        bucket.balance = float(balance)
        bucket.at = asyncio.get_running_loop().time()
        return float(granted)

    async def _sync(self) -> None:
        """Top the request lease up and pay reported tokens in (or refresh a bucket in debt)."""
        req, tok = self.requests, self.tokens
        if req is not None and req.lease < req.chunk / 2:
            # Await first: `req.lease += await ...` would read the lease before the round trip
            # and lose the calls started meanwhile (granting them twice).
            granted = await self._take(req, req.chunk - math.floor(req.lease), 0.0)
            req.lease += granted
        if tok is not None and (tok.debt > 0 or tok.balance < 0 or tok.at == -math.inf):
            pay = tok.debt
            await self._take(tok, 0.0, pay)
            tok.debt -= pay

    def _next_sync_in(self) -> float | None:
        """Seconds until the next step is worth taking (None: until the runner asks)."""
        now = asyncio.get_running_loop().time()
        waits = []
        req, tok = self.requests, self.tokens
        if req is not None and req.lease < req.chunk / 2:
            waits.append(req.refill_wait(now, 1.0))
        if tok is not None:
            if tok.debt > 0:
                waits.append(0.0)
            elif tok.balance < 0:
                waits.append(tok.refill_wait(now, 0.0))
        if not waits:
            return None
        return min(_MAX_WAIT_S, max(_MIN_WAIT_S, min(waits)))

    async def _refill(self) -> None:
        """The background task: a step whenever the runner needs one or the bucket refilled."""
        loop = asyncio.get_running_loop()
        while True:
            self._kick.clear()
            try:
                await self._sync()
                self._failing_since = None
                delay = self._next_sync_in()
            except (RedisError, OSError) as exc:
                now = loop.time()
                if self._failing_since is None:
                    self._failing_since = now
                if now - self._failing_since >= UNAVAILABLE_S:
                    raise StoreUnavailableError(
                        f"the rate-limit Redis at {self._shown} has been unreachable for "
                        f"{UNAVAILABLE_S:g}s: {exc}",
                        code="CONNECTION",
                        retriable=True,
                    ) from exc
                delay = 0.1
            if delay is None:
                await self._kick.wait()
            elif delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._kick.wait()
