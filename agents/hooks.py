"""Hooks: what a runner does around admitting, attempting and committing, outside its loop.

In the spirit of dramatiq's middleware: :class:`Hook` has a no-op default for every point, a
concern overrides the points it needs, and the runner calls each point's hooks in order. The
circuit breaker, the rate limit and backpressure, the retry budget and tracing are hooks
(:mod:`agents.builtin_hooks`); an agent's own (``App.agent(..., hooks=[...])``) run after them.

The points, in the order a record meets them:

- *start gate* (a ready record is about to take a handler slot): :meth:`Hook.slot_limit`,
  :meth:`Hook.start_delay_s`, then :meth:`Hook.call_started` once it starts;
- *attempt* (each handler call of a :class:`~agents.attempt.Call`, retries included):
  :meth:`Hook.first_call`, :meth:`Hook.before_attempt`, :meth:`Hook.attempt_started`,
  :meth:`Hook.call_returned`, :meth:`Hook.attempt_ended` (or :meth:`Hook.attempt_cancelled`),
  and :meth:`Hook.before_retry` before another try;
- *admission* and *commit*: :meth:`Hook.admitting` for every decoded record (False skips it),
  :meth:`Hook.rejected` for a record dead-lettered before any handler saw it,
  :meth:`Hook.output` for every output, :meth:`Hook.committed` after each commit the runner
  made (the runner commits; hooks only observe).

A hook instance belongs to one runner (one agent in one worker process).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agents.attempt import Call
    from agents.context import Context
    from blackboard.artifacts import Envelope
    from blackboard.records import AtomicCommit, Record


class Hook:
    """A concern around the processing loop; every method is a no-op (subclass and override)."""

    # -- the start gate ------------------------------------------------------------------------
    def slot_limit(self, concurrency: int, running: int) -> int:
        """How many handler calls may run now, given the agent's ``concurrency`` (a breaker
        that is open lets none start, half-open one trial)."""
        return concurrency

    def start_delay_s(self, now: float) -> float:
        """Seconds until another handler call may start (0: now). While one is positive, a
        handler slot takes one record at a time."""
        return 0.0

    def call_started(self, now: float) -> None:
        """A ready record took a handler slot (a rate limit spends its token here)."""

    def fetching(self) -> bool:
        """False pauses fetching from the store (a breaker's cool-down)."""
        return True

    def wake_in_s(self, now: float) -> float | None:
        """In how many seconds the loop should look again though nothing happened (None: no
        need)."""
        return None

    # -- the attempt -------------------------------------------------------------------------
    def first_call(self, call: Call) -> None:
        """A call is about to make its first attempt (a retry budget counts it)."""

    async def before_attempt(self, call: Call) -> bool:
        """Wait until the attempt may start; False leaves the call unfinished (read again
        later). ``call.gated`` with ``call.attempt == 1``: the start gate let it through."""
        return True

    def attempt_started(self, call: Call) -> None:
        """The handler is about to be called (tracing opens the attempt's span here)."""

    def call_returned(self, call: Call, context: Context) -> None:
        """The handler returned or raised (a tokens/s limit reads ``context.tokens``)."""

    def attempt_ended(self, call: Call, error: BaseException | None, stage: str | None) -> None:
        """The attempt succeeded (``error`` None) or failed at ``stage``; ``call.retrying``
        says whether it will be tried again. ``stage`` is ``produce`` when an output, not the
        handler, was at fault."""

    def attempt_cancelled(self, call: Call) -> None:
        """The attempt was cancelled (a stop past the grace period)."""

    async def before_retry(self, call: Call) -> bool:
        """Wait until a failed call may be tried again (a retry budget defers it); False
        leaves it unfinished."""
        return True

    def released(self, why: object, queue_wait_ms: float) -> None:
        """The current attempt's record completed a batch: ``why`` it was released, and how
        long its oldest record waited."""

    # -- admission and commit ------------------------------------------------------------------
    def admitting(self, envelope: Envelope) -> bool:
        """A record decoded: False skips it (finished and committed without a handler call,
        like a record another agent's replay was meant for); visibility checks go here."""
        return True

    def rejected(self, record: Record, stage: str, error: BaseException) -> None:
        """A record is dead-lettered (before a handler saw it, for the pre-process stages)."""

    def output(self, envelope: Envelope) -> Envelope:
        """An output about to be encoded; return it, or a copy to send instead."""
        return envelope

    def committed(
        self, commit: AtomicCommit, records: int, start_ns: int, error: BaseException | None
    ) -> None:
        """A commit the runner made (started at ``start_ns``) succeeded or failed."""


def _overrides(hook: Hook, name: str) -> bool:
    return getattr(type(hook), name) is not getattr(Hook, name)


class Hooks:
    """The hooks of one runner, each point's list holding only the hooks that override it
    (the fast path with no breaker, limit or budget calls nothing per record)."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.all = tuple(hooks)

        def of(name: str) -> tuple[Hook, ...]:
            return tuple(h for h in self.all if _overrides(h, name))

        self.slot_limit = of("slot_limit")
        self.start_delay = of("start_delay_s")
        self.call_started = of("call_started")
        self.fetching = of("fetching")
        self.wake_in = of("wake_in_s")
        self.first_call = of("first_call")
        self.before_attempt = of("before_attempt")
        self.attempt_started = of("attempt_started")
        self.call_returned = of("call_returned")
        self.attempt_ended = of("attempt_ended")
        self.attempt_cancelled = of("attempt_cancelled")
        self.before_retry = of("before_retry")
        self.released = of("released")
        self.admitting = of("admitting")
        self.rejected = of("rejected")
        self.output = of("output")
        self.committed = of("committed")

    def limit(self, concurrency: int, running: int) -> int:
        """The slot limit every hook agrees to."""
        for hook in self.slot_limit:
            concurrency = min(concurrency, hook.slot_limit(concurrency, running))
        return concurrency

    def delay_s(self, now: float) -> float:
        """The longest start delay any hook asks for."""
        return max((h.start_delay_s(now) for h in self.start_delay), default=0.0)

    def may_fetch(self) -> bool:
        """Whether every hook lets the runner fetch."""
        return all(h.fetching() for h in self.fetching)

    def wake_in_s(self, now: float) -> float | None:
        """The soonest any hook wants the loop to look again."""
        times = [t for h in self.wake_in if (t := h.wake_in_s(now)) is not None]
        return min(times) if times else None
