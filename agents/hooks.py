"""Hooks: what a runner does around admitting, attempting and committing, outside its loop.

In the spirit of dramatiq's middleware: :class:`Hook` has a no-op default for every point, a
concern overrides the points it needs, and the runner calls each point's hooks in order. The
circuit breaker, the rate limit and backpressure, the retry budget and tracing are hooks
(:mod:`agents.builtin_hooks`); an agent's own (``App.agent(..., hooks=[...])``) run after them.

The points, in the order a record meets them:

- *start gate* (a ready record is about to take a handler slot): :meth:`Hook.slot_limit`,
  :meth:`Hook.start_delay_s`, then :meth:`Hook.call_started` once it starts;
- *attempt* (each handler call of a :class:`~agents.attempt.Call`, retries included):
  :meth:`Hook.first_call`, :meth:`Hook.before_attempt` (:meth:`Hook.attempt_abandoned` to
  those that let it through when a later one refuses), :meth:`Hook.attempt_started`,
  :meth:`Hook.call_returned`, :meth:`Hook.attempt_ended` (or :meth:`Hook.attempt_cancelled`),
  and :meth:`Hook.before_retry` before another try;
- *admission* and *commit*: :meth:`Hook.admitting` for every decoded record (False skips it),
  :meth:`Hook.rejected` for every dead letter, :meth:`Hook.output` for every output,
  :meth:`Hook.committed` after each commit the runner made (the runner commits; hooks only
  observe).

A gate waits (``before_attempt``, ``before_retry``) and says False only when the call is no
longer current (a stop, its partition moved: its record is read again later); to fail a call,
raise. A hook that raises, or refuses a current call, fails the call for good
(:class:`~blackboard.errors.HookError`): its records are dead-lettered.

A hook given to an agent serves every runner of that agent in the process (one per worker):
keep state that must not be shared per runner, or give each worker its own instance.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
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
        """Seconds until another handler call may start (0: now). An agent with a hook that
        overrides this takes one record per handler slot at a time (a rate limit hears of a
        call's cost after it)."""
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

    #: The points a dormant hook is left out of.
    resting: frozenset[str] = frozenset({"attempt_started", "attempt_ended", "output"})

    def dormant(self) -> bool:
        """True leaves this hook out of its :attr:`resting` points (per-record ones) until it
        says False again (tracing while it is off and no span of it is open, a closed
        breaker); asked once per loop turn, and whenever the runner's breaker changes state."""
        return False

    # -- the attempt -------------------------------------------------------------------------
    def first_call(self, call: Call) -> None:
        """A call is about to make its first attempt (a retry budget counts it)."""

    def before_attempt(self, call: Call) -> bool | Awaitable[bool]:
        """Whether the attempt may start: True, False, or an awaitable of either (a gate that
        must wait; the fast path returns a plain bool). False leaves the call unfinished, for
        a call no longer current only. ``call.gated`` with ``call.first``: the start gate let
        it through."""
        return True

    def attempt_abandoned(self, call: Call) -> None:
        """An attempt this hook let through will not run: a later hook refused it."""

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


#: Point method name -> the :class:`Hooks` attribute listing the hooks called there.
_LISTS = {
    "slot_limit": "slot_limit",
    "start_delay_s": "start_delay",
    "call_started": "call_started",
    "fetching": "fetching",
    "wake_in_s": "wake_in",
    "first_call": "first_call",
    "before_attempt": "before_attempt",
    "attempt_abandoned": "attempt_abandoned",
    "attempt_started": "attempt_started",
    "call_returned": "call_returned",
    "attempt_ended": "attempt_ended",
    "attempt_cancelled": "attempt_cancelled",
    "before_retry": "before_retry",
    "released": "released",
    "admitting": "admitting",
    "rejected": "rejected",
    "output": "output",
    "committed": "committed",
}


class Hooks:
    """The hooks of one runner, each point's list holding only the hooks that override it
    and are awake there (the fast path, breaker closed and tracing off, calls nothing per
    record but the breaker's verdict)."""

    slot_limit: tuple[Hook, ...]
    start_delay: tuple[Hook, ...]
    call_started: tuple[Hook, ...]
    fetching: tuple[Hook, ...]
    wake_in: tuple[Hook, ...]
    first_call: tuple[Hook, ...]
    before_attempt: tuple[Hook, ...]
    attempt_abandoned: tuple[Hook, ...]
    attempt_started: tuple[Hook, ...]
    call_returned: tuple[Hook, ...]
    attempt_ended: tuple[Hook, ...]
    attempt_cancelled: tuple[Hook, ...]
    before_retry: tuple[Hook, ...]
    released: tuple[Hook, ...]
    admitting: tuple[Hook, ...]
    rejected: tuple[Hook, ...]
    output: tuple[Hook, ...]
    committed: tuple[Hook, ...]

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.all = tuple(hooks)
        self._sleepers = self._of("dormant")
        self._asleep: tuple[bool, ...] | None = None
        self.wake_up()

    def _of(self, name: str) -> tuple[Hook, ...]:
        return tuple(h for h in self.all if _overrides(h, name))

    def wake_up(self) -> None:
        """Take the dormant hooks out of (or back into) the points they rest at, if one of
        them changed its mind since the last call (the runner calls this every loop turn,
        and at once when its breaker changes state)."""
        asleep = tuple(h.dormant() for h in self._sleepers)
        if asleep == self._asleep:
            return
        self._asleep = asleep
        resting = {id(h): h.resting for h, a in zip(self._sleepers, asleep, strict=True) if a}
        for point, attribute in _LISTS.items():
            found = tuple(
                h for h in self._of(point) if point not in resting.get(id(h), frozenset())
            )
            setattr(self, attribute, found)
        if len(self.slot_limit) == 1:  # the usual case (the breaker): no loop per record
            self.limit = self.slot_limit[0].slot_limit  # type: ignore[method-assign]
        else:
            self.limit = self._limit  # type: ignore[method-assign]

    def limit(self, concurrency: int, running: int) -> int:
        """The slot limit every hook agrees to."""
        return self._limit(concurrency, running)

    def _limit(self, concurrency: int, running: int) -> int:
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
