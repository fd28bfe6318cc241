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

from agents.context import Context, KeyedState
from agents.work import Item, Outcome
from blackboard.dlq import ReplayInfo, Stage, dead_letter
from blackboard.errors import RecordTooLargeError
from blackboard.records import (
    OutgoingRecord,
    Record,
    TopicPartition,
    envelope_headers_bound,
    oversize,
)

if TYPE_CHECKING:
    from agents.agent import AgentSpec, HandlerResult
    from agents.hooks import Hooks
    from agents.partitions import Partitions
    from agents.work import RunnerStats
    from blackboard.artifacts import Envelope
    from blackboard.blackboard import Blackboard

T = TypeVar("T")

#: What a call runs for one attempt, given that attempt's context.
Invoke = Callable[[Context], Awaitable["HandlerResult"]]


@dataclass(slots=True)
class Call:
    """One handler call to make, with its retries.

    Attributes:
        record: the record it is about (a timer's: the oldest held part).
        envelope: that record's envelope (the retry budget and spans read it).
        epochs: the partitions it depends on and their epochs: if one moves, the call is left
            unfinished.
        invoke: runs the handler for one attempt.
        parts: the records dead-lettered if it fails for good.
        item: the record's :class:`Item` (None for a timer).
        attempt: the attempt about to run (1 for a first delivery).
        gated: the start gate let its first attempt through (rate limit spent already).
    """

    record: Record
    envelope: Envelope
    epochs: dict[TopicPartition, int]
    invoke: Invoke
    parts: Sequence[Record]
    item: Item | None = None
    attempt: int = 1
    gated: bool = False
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
    context: Context | None = None
    span: object = None
    """A hook's handle on the attempt (tracing's span)."""
    engine: Attempts | None = field(default=None, repr=False)
    """What runs the call (set by :meth:`Attempts.run`)."""

    def current(self) -> bool:
        """Whether no stop is asked and every partition the call depends on is still at its
        epoch."""
        engine = self.engine
        assert engine is not None
        return not engine.stopping() and engine.partitions.at(self.epochs)

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

    async def run(self, call: Call) -> Outcome | None:
        """Try ``call`` until it succeeds or fails for good (its outcome, for the next commit),
        or must be left unfinished (None)."""
        call.engine = self
        hooks, policy = self.hooks, self.spec.retry
        for hook in hooks.first_call:
            hook.first_call(call)
        try:
            while True:
                if not self.partitions.at(call.epochs):
                    return None  # rewound or lost: read again later
                for hook in hooks.before_attempt:
                    if not await hook.before_attempt(call):
                        return None
                outcome = await self._attempt(call)
                if outcome is not None:
                    return outcome
                # Failed and to be tried again.
                self.stats.retries += 1
                if not await call.pause(policy.backoff_s(call.attempt)):
                    return None
                call.note = None
                for hook in hooks.before_retry:
                    if not await hook.before_retry(call):
                        return None
                call.attempt += 1
        except asyncio.CancelledError:
            for hook in hooks.attempt_cancelled:
                hook.attempt_cancelled(call)
            raise

    async def _attempt(self, call: Call) -> Outcome | None:
        """One attempt: its outcome, or None if it failed and is to be tried again."""
        hooks, policy = self.hooks, self.spec.retry
        ctx = Context(self.spec, self.board.registry, call.envelope, call.record, call.attempt)
        if call.inputs:
            ctx.inputs = call.inputs
        if call.state_base is not None or call.state_after is not None:
            ctx.bind_state(call.state_base, call.state_after)
        call.context = ctx
        # No Timeout object (nor its current_task() lookup) per call unless one is set.
        limit = asyncio.timeout(policy.timeout_s) if policy.timeout_s else None
        for hook in hooks.attempt_started:
            hook.attempt_started(call)
        called = self.now()
        try:
            try:
                if limit is None:
                    result = await call.invoke(ctx)
                else:
                    async with limit:
                        result = await call.invoke(ctx)
            finally:
                call.service_s += self.now() - called
                for hook in hooks.call_returned:
                    hook.call_returned(call, ctx)
            outcome = self._succeeded(call, ctx, self.outputs(ctx, result))
        except RecordTooLargeError as exc:  # the output, not a dependency, is at fault
            call.retrying = False
            for hook in hooks.attempt_ended:
                hook.attempt_ended(call, exc, "produce")
            return self._failed(call, "produce", exc)
        except Exception as exc:
            call.first_failure = call.first_failure or time.time()
            expired = limit is not None and limit.expired()
            stage: Stage = "timeout" if expired else "process"
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
            for hook in hooks.attempt_ended:
                hook.attempt_ended(call, exc, stage)
            return None if call.retrying else self._failed(call, stage, exc)
        call.retrying = False
        for hook in hooks.attempt_ended:
            hook.attempt_ended(call, None, None)
        return outcome

    def _succeeded(self, call: Call, ctx: Context, outputs: list[OutgoingRecord]) -> Outcome:
        item = call.item
        outcome = (
            Outcome(item, outputs)
            if item is not None
            else Outcome(None, outputs, epochs=call.epochs)
        )
        self.partitions.keep_writes(ctx.touched_state, call.record.partition, outcome)
        return outcome

    def _failed(self, call: Call, stage: Stage, exc: BaseException) -> Outcome:
        """The call failed for good: its records to the DLQ (a timer's removal still kept)."""
        prior = call.replay.attempts if call.replay is not None else 0
        letters = [
            self.dead_letter(
                rec, stage, exc, attempt=prior + call.attempt, first_failure_ts=call.first_failure
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
    ) -> OutgoingRecord:
        """The dead letter of ``record`` (the ``rejected`` hooks hear of it)."""
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
