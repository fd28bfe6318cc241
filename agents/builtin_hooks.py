"""The runner's own concerns, written as :class:`~agents.hooks.Hook`\\ s: the circuit breaker,
the rate limit with backpressure, the retry budget and tracing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from agents.hooks import Hook
from blackboard.errors import HookError
from observability import tracing
from observability.spans import ADMITTED, AgentInfo

if TYPE_CHECKING:
    from agents.attempt import Call
    from agents.breaker import CircuitBreaker
    from agents.context import Context
    from agents.work import RunnerStats
    from blackboard.artifacts import Envelope
    from blackboard.records import AtomicCommit, Record
    from scheduler.ratelimit import Limiter
    from scheduler.retrybudget import RetryBudgets
    from scheduler.throttle_hooks import ThrottledLimiter


class Timed(Hook):
    """A hook that reads the runner's clock per call (``now``, rebound when the loop runs)."""

    now: Callable[[], float]


class BreakerHook(Hook):
    """Consecutive failures open the circuit: nothing starts (and nothing is fetched) during
    the cool-down, then one trial call decides (:mod:`agents.breaker`). The hook knows which
    call holds the trial, so only that one can give it back."""

    #: Closed, the breaker needs only each call's verdict (``attempt_ended``).
    resting = frozenset({"slot_limit", "before_attempt", "fetching", "wake_in_s"})

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self._trial: Call | None = None

    def dormant(self) -> bool:
        return self.breaker.state == "closed"

    def slot_limit(self, concurrency: int, running: int) -> int:
        breaker = self.breaker
        if breaker.state == "closed":
            return concurrency
        # Open: nothing starts until the cool-down is over; then one record at a time goes to
        # take the trial call (calls already running wait for it in before_attempt).
        return 1 if breaker.wait_s() == 0 and not running else 0

    def fetching(self) -> bool:
        return self.breaker.state == "closed"

    def wake_in_s(self, now: float) -> float | None:
        breaker = self.breaker
        return max(breaker.wait_s(), 0.001) if breaker.state == "open" else None

    def before_attempt(self, call: Call) -> bool | Awaitable[bool]:
        if self.breaker.state == "closed":
            return True
        return self._wait_for_trial(call)

    async def _wait_for_trial(self, call: Call) -> bool:
        """Wait until the breaker lets the call start; False if it should be left unfinished
        (its partition moved, or a stop came while it waited: a call already started still
        gets its attempt when the stop finds it running)."""
        breaker = self.breaker
        while not breaker.allow():
            if not call.current():
                return False
            await call.pause(min(max(breaker.wait_s(), 0.05), 1.0))
        if breaker.state == "half_open":
            self._trial = call
        if not call.at_epochs():
            self._give_back(call)
            return False
        return True

    def _give_back(self, call: Call) -> None:
        if self._trial is call:
            self._trial = None
            self.breaker.released()

    def attempt_abandoned(self, call: Call) -> None:
        self._give_back(call)

    def attempt_ended(self, call: Call, error: BaseException | None, stage: str | None) -> None:
        breaker = self.breaker
        if error is None:
            if breaker.state != "closed" or breaker.consecutive_failures:
                self._trial = None if self._trial is call else self._trial
                breaker.succeeded()
        elif stage == "produce" or call.replay is not None:
            # An output too large is not the dependency's fault; a known-bad record an
            # operator replayed gives no verdict on it either (replays cannot stall it).
            self._give_back(call)
        else:
            self._trial = None if self._trial is call else self._trial
            breaker.failed()

    def attempt_cancelled(self, call: Call) -> None:
        self._give_back(call)


class LimiterHook(Timed):
    """A requests/s and tokens/s limit, and backpressure on the types the agent publishes
    (:mod:`scheduler.ratelimit`, :mod:`scheduler.throttle`): every handler call, retries and
    timers' calls included, waits for its turn."""

    def __init__(self, limiter: Limiter, now: Callable[[], float]) -> None:
        self.limiter = limiter
        self.now = now
        self._until = 0.0

    def start_delay_s(self, now: float) -> float:
        wait = self.limiter.wait_s(now)
        self._until = now + wait if wait > 0 else 0.0
        return wait

    def wake_in_s(self, now: float) -> float | None:
        if self._until <= now:
            self._until = 0.0
            return None
        return self._until - now + 0.001

    def call_started(self, now: float) -> None:
        self.limiter.started(now)

    def before_attempt(self, call: Call) -> bool | Awaitable[bool]:
        if call.gated and call.first:
            return True  # the start gate spent its turn
        limiter, now = self.limiter, self.now()
        if limiter.wait_s(now) <= 0:
            limiter.started(now)
            return True
        return self._wait_for_turn(call)

    async def _wait_for_turn(self, call: Call) -> bool:
        limiter, now = self.limiter, self.now
        while (wait := limiter.wait_s(now())) > 0:
            if not await call.pause(wait):
                return False
        limiter.started(now())
        return True

    def call_returned(self, call: Call, context: Context) -> None:
        self.limiter.used_tokens(self.now(), context.tokens)


class RetryBudgetHook(Timed):
    """The share of calls that may be retries per artifact type and tenant
    (:mod:`scheduler.retrybudget`): a retry over it waits, without its handler slot."""

    def __init__(self, budget: RetryBudgets, now: Callable[[], float], stats: RunnerStats) -> None:
        self.budget = budget
        self.now = now
        self._stats = stats

    def first_call(self, call: Call) -> None:
        self.budget.first_attempt(call.envelope, self.now())

    async def before_retry(self, call: Call) -> bool:
        budget, env = self.budget, call.envelope
        if budget.allow(env, self.now()):
            return True
        self._stats.retries_deferred += 1
        deferral = await call.lend_slot(lambda: budget.defer(env, self.now, call.pause))
        if deferral is None:
            return False
        call.note = deferral  # the next attempt's span says why it waited
        return True


class TracingHook(Hook):
    """Spans (:mod:`observability.tracing`): one process span per attempt, a send span per
    output, a settle span per commit, and one for records dead-lettered before any handler."""

    def __init__(self, agent: AgentInfo) -> None:
        self.agent = agent
        self._open = 0  # process spans started and not ended yet

    def dormant(self) -> bool:
        return self._open == 0 and not tracing.enabled()  # off: no per-record calls at all

    def attempt_started(self, call: Call) -> None:
        self._open += 1
        call.span = tracing.process(
            self.agent,
            call.record,
            call.envelope,
            call.attempt,
            call.polled_at,
            call.note or call.decision or ADMITTED,
            call.queue_wait_ms,
        )

    def attempt_ended(self, call: Call, error: BaseException | None, stage: str | None) -> None:
        span = call.span
        if span is not None:
            call.span = None
            self._open -= 1
            span.end(error, stage=stage, retry=call.retrying)  # type: ignore[attr-defined]

    def attempt_cancelled(self, call: Call) -> None:
        if call.span is not None:  # the task ends: its current span goes with it
            call.span = None
            self._open -= 1

    def attempt_abandoned(self, call: Call) -> None:
        span = call.span
        if span is not None:  # a hook failed after the span started: end it, failed
            call.span = None
            self._open -= 1
            span.end(HookError("the attempt was abandoned"), stage="process")  # type: ignore[attr-defined]

    def released(self, why: object, queue_wait_ms: float) -> None:
        tracing.redecide(why, queue_wait_ms)

    def rejected(self, record: Record, stage: str, error: BaseException) -> None:
        tracing.rejected(self.agent, record, stage, error)

    def output(self, envelope: Envelope) -> Envelope:
        return tracing.outgoing(self.agent, envelope)

    def committed(
        self, commit: AtomicCommit, records: int, start_ns: int, error: BaseException | None
    ) -> None:
        tracing.settled(self.agent, commit, records, start_ns, error)


def send_attributes(
    throttle: ThrottledLimiter | None,
) -> Callable[[str], Mapping[str, object]] | None:
    """A topic's backpressure state for an output's send span (None while backpressure is off)."""
    if throttle is None:
        return None
    backpressure = throttle.backpressure
    return lambda topic: backpressure.throttle(topic).attributes()


def builtin_hooks(
    agent: AgentInfo,
    limiter: Limiter | None,
    breaker: CircuitBreaker | None,
    budget: RetryBudgets | None,
    now: Callable[[], float],
    stats: RunnerStats,
) -> list[Hook]:
    """A runner's own hooks, in order: tracing, the rate limit, the breaker, the retry budget.

    A call waits for its rate-limit turn before it asks the breaker for the trial call, so no
    wait comes between taking the trial and making the call.
    """
    hooks: list[Hook] = [TracingHook(agent)]
    if limiter is not None:
        hooks.append(LimiterHook(limiter, now))
    if breaker is not None:
        hooks.append(BreakerHook(breaker))
    if budget is not None:
        hooks.append(RetryBudgetHook(budget, now, stats))
    return hooks
