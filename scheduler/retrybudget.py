"""Retry budgets: at most a share of an agent's handler calls may be retries, per artifact type
and tenant (``envelope.type``, ``envelope.tenant``), over a sliding window. A retry beyond the
budget is *deferred*, not dropped nor dead-lettered: it waits (holding no handler slot) until
the budget allows it — when enough first attempts have come in, or old retries have left the
window.

The rule (as in Finagle's and Envoy's retry budgets): a retry may start when, counting it,

    retries <= ratio * (first attempts + retries) + min_retries_per_s * window_s

over the last ``window_s`` seconds of calls with the same (type, tenant). ``ratio`` is the share
of all calls that may be retries (0.2: one call in five); ``min_retries_per_s`` lets a
(type, tenant) with little traffic still retry now and then (without it a lone failing record
would wait forever). A tenant whose handler always fails thus retries at a bounded share of its
own traffic, and other tenants' calls are unaffected.

Time is the runner's clock (the event loop's ``time()``; virtual in the simulator). The window
is kept as counts in ``SLOTS`` slots, so memory is bounded per (type, tenant) whatever the rate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from blackboard.artifacts import Envelope
from blackboard.errors import ConfigError

#: Slots the window is counted in (a slot's calls leave the window together).
SLOTS = 20


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """How many of an agent's calls may be retries, per (artifact type, tenant).

    Attributes:
        ratio: the share of calls in the window that may be retries (0 < ratio < 1).
        window_s: the sliding window, in seconds.
        min_retries_per_s: retries allowed on top of the ratio (so that a type and tenant
            with little traffic still retries); must be > 0.

    Raises:
        ConfigError: a value out of range.
    """

    ratio: float = 0.2
    window_s: float = 10.0
    min_retries_per_s: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1 or self.window_s <= 0 or self.min_retries_per_s <= 0:
            raise ConfigError(
                "a retry budget needs 0 < ratio < 1, window_s > 0 and min_retries_per_s > 0"
            )

    def tracker(self) -> RetryBudgets:
        """Fresh counts for one runner."""
        return RetryBudgets(self)


@dataclass(frozen=True, slots=True)
class Deferral:
    """A retry the budget held back: its ``str()`` is the next attempt's
    ``bb.policy.decision``."""

    artifact_type: str
    tenant: str
    ratio: float
    waited_s: float

    def __str__(self) -> str:
        return (
            f"deferred retry-budget type={self.artifact_type} tenant={self.tenant} "
            f"ratio={self.ratio:g} waited={self.waited_s:.3f}s"
        )


class _Window:
    """Calls of one (type, tenant) in the last window: [slot, first attempts, retries] rows."""

    __slots__ = ("firsts", "retries", "rows")

    def __init__(self) -> None:
        self.rows: deque[list[int]] = deque()
        self.firsts = 0
        self.retries = 0

    def expire(self, slot: int) -> None:
        rows = self.rows
        while rows and rows[0][0] <= slot - SLOTS:
            _, firsts, retries = rows.popleft()
            self.firsts -= firsts
            self.retries -= retries

    def add(self, slot: int, retry: bool) -> None:
        rows = self.rows
        if not rows or rows[-1][0] != slot:
            rows.append([slot, 0, 0])
        if retry:
            rows[-1][2] += 1
            self.retries += 1
        else:
            rows[-1][1] += 1
            self.firsts += 1


class RetryBudgets:
    """The counts of one runner: a sliding window per (artifact type, tenant).

    Not thread-safe: one runner, one event loop.
    """

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget
        self._slot_s = budget.window_s / SLOTS
        self._floor = budget.min_retries_per_s * budget.window_s
        self._windows: dict[tuple[str, str], _Window] = {}
        self._calls = 0
        self.deferred = 0
        """Retries held back so far."""

    def _window(self, envelope: Envelope, now: float) -> tuple[_Window, int]:
        key = (envelope.type, envelope.tenant)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window()
        slot = int(now // self._slot_s)
        window.expire(slot)
        return window, slot

    def first_attempt(self, envelope: Envelope, now: float) -> None:
        """A record's first handler call started."""
        window, slot = self._window(envelope, now)
        window.add(slot, retry=False)
        self._calls += 1
        if self._calls % 4096 == 0:
            self.forget_idle(now)

    def allow(self, envelope: Envelope, now: float) -> bool:
        """Whether a retry may start now; if so it is counted."""
        window, slot = self._window(envelope, now)
        retries = window.retries + 1
        if retries > self.budget.ratio * (window.firsts + retries) + self._floor:
            return False
        window.add(slot, retry=True)
        return True

    async def defer(
        self,
        envelope: Envelope,
        clock: Callable[[], float],
        pause: Callable[[float], Awaitable[bool]],
    ) -> Deferral | None:
        """Wait until the budget allows a retry that :meth:`allow` refused (checking once per
        slot of the window); the deferral to report, or None if ``pause`` (a sleep that ends
        early on stop) says the record should be left unfinished instead."""
        self.deferred += 1
        started = clock()
        while True:
            if not await pause(self._slot_s):
                return None
            now = clock()
            if self.allow(envelope, now):
                return Deferral(envelope.type, envelope.tenant, self.budget.ratio, now - started)

    def forget_idle(self, now: float) -> None:
        """Drop the windows with nothing left in them (tenants gone quiet)."""
        slot = int(now // self._slot_s)
        for key, window in list(self._windows.items()):
            window.expire(slot)
            if not window.rows:
                del self._windows[key]
