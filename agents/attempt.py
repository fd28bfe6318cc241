"""The one attempt path: every handler call a runner makes — for a record, a batch whose window
closed, a join that timed out — goes through :meth:`Attempts.run`, so each gets the same
retries, time limit, hooks (breaker, rate limit, retry budget, spans) and dead letters.

A :class:`Call` says what to call and what it depends on; :meth:`Attempts.run` tries it until
it succeeds, fails for good (its records go to the DLQ) or must be left unfinished (a stop, or
its partition moved: the records are read again later), and returns the :class:`Outcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from agents.context import NO_SERVICES, Context, KeyedState, Services
from agents.work import Item, Outcome
from blackboard.dlq import ReplayInfo, Stage, dead_letter
from blackboard.errors import HookError, RecordTooLargeError
from blackboard.records import (
    OutgoingRecord,
    Record,
    TopicPartition,
    envelope_headers_bound,
    oversize,
)

if TYPE_CHECKING:
    from agents.agent import AgentSpec, HandlerResult
    from agents.hooks import Hook, Hooks
    from agents.partitions import Partitions
    from agents.work import RunnerStats
    from blackboard.artifacts import Envelope
    from blackboard.blackboard import Blackboard

T = TypeVar("T")

#: What a call runs for one attempt, given the call and that attempt's context.
Invoke = Callable[["Call", Context], Awaitable["HandlerResult"]]


@dataclass(slots=True)
class Call:
    """One handler call to make, with its retries.

    Attributes:
        record: the record it is about (a timer's: the oldest held part).
        envelope: that record's envelope (the retry budget and spans read it).
        epochs: the partitions it depends on and their epochs, if more than the item's own
            (a timer's): if one moves, the call is left unfinished.
        invoke: runs the handler for one attempt (None: ``handler(payload, ctx)``).
        parts: the records dead-lettered if it fails for good.
        item: the record's :class:`Item` (None for a timer).
        attempt: the attempt about to run (the store's delivery count on the first).
        gated: the start gate let its first attempt through (a rate limit spent its turn).
        first: the attempt about to run is the call's first.
    """

    record: Record
    envelope: Envelope
    epochs: dict[TopicPartition, int] | None
    invoke: Invoke | None
    parts: Sequence[Record]
    item: Item | None = None
    attempt: int = 1
    gated: bool = False
    first: bool = True
    handler: Any = None
    """With ``invoke`` None: the handler, called with ``payload``."""
    payload: Any = None
    replay: ReplayInfo | None = None
    polled_at: float | None = None
    decision: object = None
    """Why it runs now (the scheduling policy's decision, a batch's release)."""
    queue_wait_ms: float | None = None
    """How long it waited, when not from ``polled_at`` (a timer's oldest part)."""
    state_base: dict[str, bytes] | None = None
    """The keyed state view handlers read (ordered agents)."""
    state_after: dict[str, bytes | None] | None = None
    """Writes every attempt starts from (a timer's removal of what it fired)."""
    inputs: tuple[Envelope, ...] = ()
    first_failure: float | None = None
    service_s: float = 0.0
    retrying: bool = False
    """Set on a failed attempt: whether the call will be tried again."""
    note: object = None
    """What a hook says about this attempt's start instead of ``decision`` (a deferral)."""
    span: object = None
    """A hook's handle on the attempt (tracing's span)."""
    engine: Attempts | None = field(default=None, repr=False)
    """What runs the call (set by :meth:`Attempts.run`)."""

    def at_epochs(self) -> bool:
        """Whether every partition the call depends on is still at its epoch."""
        engine = self.engine
        assert engine is not None
        item = self.item
        if item is not None:
            return engine.partitions.epoch.get(item.tp) == item.epoch
        return engine.partitions.at(self.epochs or {})

    def current(self) -> bool:
        """Whether no stop is asked and every partition the call depends on is still at its
        epoch."""
        engine = self.engine
        assert engine is not None
        return not engine.stopping() and self.at_epochs()

    async def pause(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early on stop; whether the call is still current."""
        engine = self.engine
        assert engine is not None
        await engine.pause(seconds)
        return self.current()

    async def lend_slot(self, wait: Callable[[], Awaitable[T]]) -> T:
        """``await wait()`` with the call's handler slot lent to other records (a deferred
        retry); if it returns something, take a slot again before going on (the agent's
        concurrency holds for retries too)."""
        engine = self.engine
        assert engine is not None
        result: T = await engine.lend_slot(wait)
        return result


@dataclass(slots=True)
class Attempts:
    """Runs calls for one agent (see the module docstring).

    Args:
        spec: the agent.
        board: its blackboard (registry, record encoding, store limits).
        group: its consumer group (dead letters name it).
        hooks: the runner's hooks.
        partitions: epochs and keyed state.
        stats: the runner's counters.
        max_output_bytes: the largest output value.
        now: the event loop's clock.
        stopping: whether a stop was asked.
        pause: sleeps up to its argument, waking early on stop.
        lend_slot: awaits its argument with the caller's handler slot lent to others.
        log: the runner's logger.
        services: the worker's resources and the agent's model calls, for each context.
    """

    spec: AgentSpec
    board: Blackboard
    group: str
    hooks: Hooks
    partitions: Partitions
    stats: RunnerStats
    max_output_bytes: int
    now: Callable[[], float]
    stopping: Callable[[], bool]
    pause: Callable[[float], Awaitable[None]]
    lend_slot: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
    log: object
    services: Services = NO_SERVICES

    async def run(self, call: Call) -> Outcome | None:
        """Try ``call`` until it succeeds or fails for good (its outcome, for the next commit),
        or must be left unfinished (None: a stop, or its partition moved). A hook that raises,
        or refuses a call that is still current (which would strand its record), fails the
        call for good: its records go to the DLQ, stage ``process``.

        One function, not one per attempt: it runs for every record, and each awaited
        coroutine costs as much as a few lines here."""
        call.engine = self
        hooks, policy, spec, services = self.hooks, self.spec.retry, self.spec, self.services
        epoch, item = self.partitions.epoch, call.item
        granted: list[Hook] = []  # the gates that let the current attempt through
        try:
            if hooks.first_call:
                for hook in hooks.first_call:
                    hook.first_call(call)
            while True:
                if (
                    epoch.get(item.tp) != item.epoch
                    if item is not None
                    else not self.partitions.at(call.epochs or {})
                ):
                    return None  # rewound or lost: read again later
                if hooks.before_attempt and not await self._gates(call, granted):
                    return None
                # -- one attempt
                ctx = Context(spec, self.board.registry, call.envelope, call.record, call.attempt)
                if services is not NO_SERVICES:
                    ctx.services = services
                if call.inputs:
                    ctx.inputs = call.inputs
                if call.state_base is not None or call.state_after is not None:
                    ctx.bind_state(call.state_base, call.state_after)
                # No Timeout object (nor its current_task() lookup) per call unless one is set.
                limit = asyncio.timeout(policy.timeout_s) if policy.timeout_s else None
                if hooks.attempt_started:
                    for hook in hooks.attempt_started:
                        hook.attempt_started(call)
                invoke = call.invoke
                called = self.now()
                try:
                    try:
                        if limit is None:
                            result = await (
                                call.handler(call.payload, ctx)
                                if invoke is None
                                else invoke(call, ctx)
                            )
                        else:
                            async with limit:
                                result = await (
                                    call.handler(call.payload, ctx)
                                    if invoke is None
                                    else invoke(call, ctx)
                                )
                    finally:
                        call.service_s += self.now() - called
                        if hooks.call_returned:
                            _each_returned(hooks.call_returned, call, ctx)
                    outputs = self.outputs(ctx, result)
                except HookError:
                    raise  # a hook's failure, not the handler's: the call fails for good
                except RecordTooLargeError as exc:  # the output, not a dependency, is at fault
                    call.retrying = False
                    for hook in hooks.attempt_ended:
                        hook.attempt_ended(call, exc, "produce")
                    return self._failed(call, "produce", exc)
                except Exception as exc:
                    stage: Stage = (
                        "timeout"
                        if limit is not None and limit.expired()
                        else getattr(exc, "dlq_stage", "process")  # llm_output, budget
                    )
                    if not self._failed_attempt(call, exc, stage):
                        return self._failed(call, stage, exc)
                else:
                    call.retrying = False
                    outcome = (
                        Outcome(item, outputs)
                        if item is not None
                        else Outcome(None, outputs, epochs=call.epochs)
                    )
                    touched = ctx.used_state
                    if touched is not None:
                        self.partitions.keep_writes(touched, call.record.partition, outcome)
                    for hook in hooks.attempt_ended:
                        hook.attempt_ended(call, None, None)
                    return outcome
                granted.clear()  # the attempt ended: what it was granted is used
                # -- failed, to be tried again
                self.stats.retries += 1
                call.first = False
                if not await call.pause(policy.backoff_s(call.attempt)):
                    return None
                call.note = None
                for hook in hooks.before_retry:
                    if not await hook.before_retry(call):
                        self._refused(call, hook, ())
                        return None
                call.attempt += 1
        except asyncio.CancelledError:
            for hook in hooks.attempt_cancelled:
                hook.attempt_cancelled(call)
            raise
        except Exception as exc:  # a hook raised or broke its contract (handlers' errors are
            # caught above): give back what gates granted, end what was started, and fail
            # the call for good, without the hooks (one of them is what failed).
            for hook in hooks.attempt_abandoned:
                with contextlib.suppress(Exception):
                    hook.attempt_abandoned(call)
            if not isinstance(exc, HookError) or exc.__cause__ is not None:
                self.log.error(  # type: ignore[attr-defined]
                    "a hook failed; dead-lettering the call",
                    artifact_id=call.envelope.id,
                    error=f"{type(exc).__name__}: {exc}",
                )
            return self._failed(call, "process", exc, quiet=True)

    async def _gates(self, call: Call, granted: list[Hook]) -> bool:
        """Pass ``call`` through the ``before_attempt`` gates; False if one refused (the call
        is left unfinished). A gate that waits may see others change meanwhile (a breaker
        opening wakes its gate): the gates are gone through again until none changed, each
        asked once per attempt.

        Raises:
            HookError: a gate refused a call that is still current.
        """
        hooks = self.hooks
        while True:
            gates = hooks.before_attempt
            for hook in gates:
                if hook in granted:
                    continue
                allowed = hook.before_attempt(call)
                if allowed is not True and (allowed is False or not await allowed):
                    self._refused(call, hook, granted)
                    return False
                granted.append(hook)
            if hooks.before_attempt is gates:
                return True

    def _failed_attempt(self, call: Call, exc: Exception, stage: Stage) -> bool:
        """Note a failed attempt (log, hooks); whether the call is to be tried again."""
        policy = self.spec.retry
        call.first_failure = call.first_failure or time.time()
        call.retrying = (
            call.attempt < policy.max_attempts and policy.retryable(exc) and not self.stopping()
        )
        self.log.warning(  # type: ignore[attr-defined]
            "handler failed",
            artifact_id=call.envelope.id,
            attempt=call.attempt,
            stage=stage,
            retry=call.retrying,
            error=f"{type(exc).__name__}: {exc}",
        )
        for hook in self.hooks.attempt_ended:
            hook.attempt_ended(call, exc, stage)
        return call.retrying

    def _refused(self, call: Call, hook: Hook, granted: Sequence[Hook]) -> None:
        """A hook said no: the hooks that had let the attempt through hear it will not run;
        fine if the call is no longer current (it is read again later), else an error.

        Raises:
            HookError: the call is still current, so nothing would ever read it again.
        """
        for earlier in granted:
            earlier.attempt_abandoned(call)
        if call.current():
            raise HookError(
                f"hook {type(hook).__name__} refused a call that is still current (a gate "
                "should wait, or raise to fail the call)"
            )

    def _failed(
        self, call: Call, stage: Stage, exc: BaseException, *, quiet: bool = False
    ) -> Outcome:
        """The call failed for good: its records to the DLQ (a timer's removal still kept)."""
        prior = call.replay.attempts if call.replay is not None else 0
        letters = [
            self.dead_letter(
                rec,
                stage,
                exc,
                attempt=prior + call.attempt,
                first_failure_ts=call.first_failure,
                quiet=quiet,
            )
            for rec in call.parts
        ]
        if call.item is not None:
            return Outcome(call.item, dead_letter=letters[0])
        outcome = Outcome(None, dead_letters=letters, epochs=call.epochs)
        if call.state_after:
            removal = KeyedState(call.state_base or {})
            removal.writes.update(call.state_after)
            self.partitions.keep_writes(removal, call.record.partition, outcome)
        return outcome

    def outputs(self, ctx: Context, result: HandlerResult) -> list[OutgoingRecord]:
        """Publish what a handler returned (an output, a list, or None) after what it
        published itself, and encode them all.

        Raises:
            RecordTooLargeError: an output is over the agent's or the store's size limit.
        """
        if result is not None:
            if isinstance(result, BaseModel):
                ctx.publish(result)
            else:
                for out in result:
                    ctx.publish(out)
        return self._encode(ctx)

    def _encode(self, ctx: Context) -> list[OutgoingRecord]:
        limit, store_limit = self.max_output_bytes, self.board.store.max_record_bytes
        record_for, output_hooks = self.board.record_for, self.hooks.output
        records = []
        for out in ctx.outputs:
            env = out.envelope
            if output_hooks:
                for hook in output_hooks:
                    env = hook.output(env)
            record = record_for(env, out.payload)
            if record.value is not None and len(record.value) > limit:
                raise RecordTooLargeError(
                    f"output {env.type} {env.id} is {len(record.value)} bytes, "
                    f"over the limit of {limit}",
                    code="MSG_SIZE_TOO_LARGE",
                )
            # Headers bounded from the envelope first: an exact count only near the limit.
            bound = len(record.key or b"") + len(record.value or b"")
            size = None
            if bound + envelope_headers_bound(env) > store_limit:
                size = oversize(record, store_limit)
            if size is not None:
                raise RecordTooLargeError(
                    f"output {env.type} {env.id} is {size} bytes with its "
                    f"headers, over the store's limit of {store_limit}",
                    code="MSG_SIZE_TOO_LARGE",
                )
            records.append(record)
        return records

    def dead_letter(
        self,
        record: Record,
        stage: Stage,
        exc: BaseException,
        *,
        attempt: int = 1,
        first_failure_ts: float | None = None,
        quiet: bool = False,
    ) -> OutgoingRecord:
        """The dead letter of ``record`` (the ``rejected`` hooks hear of it, unless ``quiet``:
        a hook's own failure is being dead-lettered)."""
        if not quiet:
            for hook in self.hooks.rejected:
                hook.rejected(record, stage, exc)
        return dead_letter(
            record,
            stage=stage,
            error=exc,
            group=self.group,
            agent=self.spec.name,
            attempt=attempt,
            first_failure_ts=first_failure_ts,
            max_bytes=self.board.store.max_record_bytes,
        )


async def pause_until_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep up to ``seconds``, waking early when ``stop`` is set."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()


def _each_returned(hooks: Sequence[Hook], call: Call, ctx: Context) -> None:
    """The ``call_returned`` hooks; one that raises fails the call for good (a hook's error is
    not the handler's, to be retried).

    Raises:
        HookError: a hook raised (its error is the cause).
    """
    for hook in hooks:
        try:
            hook.call_returned(call, ctx)
        except Exception as exc:
            raise HookError(
                f"hook {type(hook).__name__} failed: {type(exc).__name__}: {exc}"
            ) from exc
