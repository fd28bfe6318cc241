"""One gate per model endpoint in a process, shared by every agent that calls it: a 429 with
``Retry-After`` pauses every caller until then, and repeated 429s teach the gate a request
rate (no rate at all until the first 429, so an endpoint with room is never held back).

The rate moves like TCP CUBIC's window, simplified: a 429 remembers the rate that hit the
limit (the *ceiling*) and drops to ``decrease`` times it; the rate then climbs back quickly
toward the ceiling (``recover``: a share of the gap per second) and probes above it slowly
(``probe``, the same requests/s per second for every worker), so it spends most of its time
just under the limit and 429s stay rare. The first
ceiling is the rate calls *succeeded* at (not the rate they were sent at, which a burst of
429s inflates); several workers sharing a provider's limit each find their share.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from scheduler.ratelimit import TokenBucket


@dataclass(slots=True)
class GateStats:
    """What a gate saw (``blackboard demo --json`` and the benchmarks print these)."""

    calls: int = 0
    rate_limited: int = 0
    decreases: int = 0
    paused_s: float = 0.0


@dataclass(slots=True)
class ModelGate:
    """The pause and the learned request rate of one model endpoint.

    Attributes:
        decrease: on a 429 the rate drops to this share of the ceiling (at most once per
            ``settle_s``).
        recover: the share of the gap to the ceiling closed per second.
        probe: above the ceiling, requests/s added per second: the same for every worker, so
            shares of a limit even out (additive increase, multiplicative decrease).
        min_rate: the rate never falls below this (requests/s).
        settle_s: after a decrease, 429s of calls already in flight do not lower it again.
        default_pause_s: the pause of a 429 without ``Retry-After`` (short: the learned
            rate, not the pause, keeps the calls under the limit).
    """

    decrease: float = 0.85
    recover: float = 0.5
    probe: float = 1.0
    min_rate: float = 0.5
    settle_s: float = 0.5
    default_pause_s: float = 0.1
    now: Callable[[], float] = time.monotonic
    paused_until: float = 0.0
    rate: float | None = None
    ceiling: float | None = None
    stats: GateStats = field(default_factory=GateStats)
    _bucket: TokenBucket | None = None
    _last_decrease: float = -1e9
    _grown_at: float = 0.0
    _starts: list[float] = field(default_factory=list)
    _successes: list[float] = field(default_factory=list)

    def wait_s(self) -> float:
        """Seconds until the next call may go (0: now)."""
        now = self.now()
        wait = self.paused_until - now
        if self._bucket is not None:
            self._grow(now)
            wait = max(wait, self._bucket.wait_s(now))
        return max(0.0, wait)

    async def acquire(self) -> None:
        """Wait for the pause and the rate, then count the call as started."""
        while (wait := self.wait_s()) > 0:
            self.stats.paused_s += wait
            await asyncio.sleep(wait)
        now = self.now()
        if self._bucket is not None:
            self._bucket.take(now)
        self.stats.calls += 1
        starts = self._starts
        starts.append(now)
        if len(starts) > 256:
            del starts[:128]

    def throttled(self, retry_after_s: float | None) -> None:
        """A call was answered 429: pause every caller, and lower the rate."""
        now = self.now()
        self.stats.rate_limited += 1
        pause = retry_after_s if retry_after_s is not None else self.default_pause_s
        self.paused_until = max(self.paused_until, now + pause)
        if now - self._last_decrease < self.settle_s + pause:
            return  # calls in flight when the limit was hit: one decrease per event
        if self.rate is None:
            ceiling = self._success_rate(now)
            if ceiling is None:
                return  # nothing answered yet to learn a rate from: the pause alone
        else:
            ceiling = self.rate  # the rate that hit the limit
        self._last_decrease = now
        self.stats.decreases += 1
        self.ceiling = max(self.min_rate, ceiling)
        self.rate = max(self.min_rate, self.ceiling * self.decrease)
        self._bucket = TokenBucket(self.rate, max(1.0, self.rate * 0.2))
        self._grown_at = now + pause

    def succeeded(self) -> None:
        """A call was answered (the rate a decrease starts from)."""
        successes = self._successes
        successes.append(self.now())
        if len(successes) > 4096:
            del successes[:2048]

    def _success_rate(self, now: float) -> float | None:
        """Calls answered per second over the last two seconds (None: too few to tell)."""
        recent = [t for t in self._successes if t > now - 2.0]
        if len(recent) < 2:
            return None
        return len(recent) / max(now - recent[0], 0.25)

    def _grow(self, now: float) -> None:
        bucket = self._bucket
        if bucket is None or self.rate is None or now <= self._grown_at:
            return
        elapsed = now - self._grown_at
        ceiling = self.ceiling or self.rate
        if self.rate < ceiling * 0.99:  # back toward the ceiling, fast
            self.rate += (ceiling - self.rate) * min(1.0, self.recover * elapsed)
        else:  # above it, slowly
            self.rate += self.probe * elapsed
        self._grown_at = now
        bucket.rate = self.rate
        bucket.burst = max(1.0, self.rate * 0.2)


class Gates:
    """The gates of a process, one per ``(provider, endpoint)``."""

    def __init__(self) -> None:
        self._gates: dict[str, ModelGate] = {}

    def of(self, endpoint: str) -> ModelGate:
        """The gate of ``endpoint`` (made on first use)."""
        gate = self._gates.get(endpoint)
        if gate is None:
            gate = self._gates[endpoint] = ModelGate()
        return gate

    def stats(self) -> dict[str, GateStats]:
        """Every gate's counters."""
        return {k: g.stats for k, g in self._gates.items()}
