"""Handler slots: up to ``concurrency`` calls of one agent run at once.

The runner's loop starts a slot task for each ready record that may start (the start gate:
free slots, and the hooks' limits — an open breaker, a rate limit); a slot goes on with the
next ready record when its record finishes, so under a backlog the running slots take the work
and the loop starts nothing. A timer's call (a batch window, a join timeout) holds a slot too.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from agents.attempt import Attempts, Call
from agents.work import Item, OrderKey, Outcome

if TYPE_CHECKING:
    from agents.agent import HandlerResult
    from agents.clock import Clock
    from agents.context import Context
    from agents.hooks import Hooks
    from agents.intake import Intake
    from agents.partitions import Partitions
    from agents.work import RunnerStats
    from blackboard.records import Record

T = TypeVar("T")

#: A handler slot gives the event loop a turn after this many records in a row ...
SLOT_BURST = 16
#: ... or after this long, whichever comes first.
SLOT_SLICE_S = 0.002


class Slots:
    """The handler slots of one runner.

    Args:
        concurrency: the agent's most calls at once.
        hooks: the runner's hooks (the start gate).
        intake: the ready queue and per-key turns.
        partitions: epochs and keyed state.
        attempts: runs the calls.
        finish: takes an outcome for the next commit.
        stats: the runner's counters.
        now: the event loop's clock.
        clock: the wall clock of batch windows.
        delivery: how many times the store delivered a record (1 the first time).
        wake: wakes the runner's loop.
        stopping: whether a stop was asked.
    """

    def __init__(
        self,
        concurrency: int,
        hooks: Hooks,
        intake: Intake,
        partitions: Partitions,
        attempts: Attempts,
        finish: Callable[[Outcome], None],
        stats: RunnerStats,
        now: Callable[[], float],
        clock: Clock,
        delivery: Callable[[Record], int],
        wake: Callable[[], None],
        stopping: Callable[[], bool],
    ) -> None:
        self.concurrency = concurrency
        self.spec = intake.spec
        self.hooks = hooks
        self.intake = intake
        self.partitions = partitions
        self.attempts = attempts
        self.finish = finish
        self.stats = stats
        self.now = now
        self.clock = clock
        self.delivery = delivery
        self.wake = wake
        self.stopping = stopping
        self.stopped = False
        """Set by the runner's stop (read per record: an attribute, not a call)."""
        self.running = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self._waiters = 0  # resumed retries waiting for a slot
        self._freed = asyncio.Event()
        # A gated agent takes one record per slot: a rate limit's tokens arrive after calls.
        self._one_per_slot = bool(hooks.start_delay)

    def dispatch(self) -> int:
        """Start a slot for each ready record that may start now; how many started."""
        loop = asyncio.get_running_loop()
        started = 0
        while True:
            item = self.take()
            if item is None:
                return started
            task = loop.create_task(self._slot(item))
            self.tasks.add(task)
            started += 1

    def take(self) -> Item | None:
        """The next ready record that may start now, counted as running; None if none may
        (nothing ready, every slot busy, a hook holds the start)."""
        hooks, intake = self.hooks, self.intake
        cap = self.concurrency
        if hooks.slot_limit:
            cap = hooks.limit(cap, self.running)
        cap -= self._waiters  # slots kept for resumed retries
        ready, epochs = intake.ready, self.partitions.epoch
        while ready and self.running < cap:
            now = self.now()
            if hooks.start_delay and hooks.delay_s(now) > 0:
                return None
            item, decision = ready.pop(now)
            item.decision = decision
            if decision.overtaken:
                self.stats.deferred += 1
            if epochs.get(item.tp) != item.epoch:
                intake.done_with(item, None)
                intake.release_key(item)
                intake.unclaim_replay(item)
                continue
            for hook in hooks.call_started:
                hook.call_started(now)
            self.running += 1
            if self.spec.ordered:
                intake.running_keys.add(item.key)
            return item
        return None

    async def _slot(self, item: Item) -> None:
        """Run ``item``, then the next ready record, and so on until none may start or a stop
        is asked: one task runs many records in a row (a task per record costs ~4 us, as much
        as the rest of the runner's work on it). The slot gives the event loop a turn every
        :data:`SLOT_BURST` records or :data:`SLOT_SLICE_S`, so polls and commits keep going.

        Each record's call runs right here, not in a coroutine of its own (an awaited
        coroutine per record costs as much as a few lines of this loop); it is finished with
        its outputs or its dead letter, or, cut short (stop requested, partition gone), left
        unfinished: read again later."""
        now, run, spec, intake = self.now, self.attempts.run, self.spec, self.intake
        collect = None if spec.collector is None else self._collect
        state = self.partitions.state if spec.ordered else None
        ran, slice_end = 0, now() + SLOT_SLICE_S
        context = contextvars.copy_context()  # what a task of its own would start with
        try:
            while True:
                art, rec, replay = item.artifact, item.record, item.replay
                assert art is not None
                call = Call(
                    rec,
                    art.envelope,
                    None,
                    collect,
                    (rec,),
                    item,
                    self.delivery(rec),
                    True,
                    True,
                    spec.handler,
                    art.payload,
                    replay,
                    item.polled_at,
                    item.decision,
                    None,
                    state.get(rec.partition) if state is not None else None,
                    None,
                    (),
                    replay.first_failure_ts if replay is not None else None,
                )
                outcome: Outcome | None = None
                try:
                    outcome = await run(call)
                finally:
                    self.free()
                    if item.info is not None:
                        intake.done_with(item, call.service_s if outcome is not None else None)
                    if replay is not None:
                        intake.settle_replay(item, outcome)
                    if outcome is not None:
                        self.finish(outcome)
                    if spec.ordered:
                        intake.release(item.key)
                    self.wake()
                if self.stopped or self._one_per_slot or contextvars.copy_context() != context:
                    # A handler that set a context variable (e.g. structlog's bound context)
                    # must not leak it into the next record: that one gets a fresh task.
                    return
                next_item = self.take()
                if next_item is None:
                    return
                item = next_item
                ran += 1
                if ran >= SLOT_BURST or now() >= slice_end:
                    try:
                        await asyncio.sleep(0)
                    except BaseException:
                        self.give_back(item)  # cancelled before it ran: read again later
                        raise
                    ran, slice_end = 0, now() + SLOT_SLICE_S
        finally:
            self.tasks.discard(asyncio.current_task())

    async def _collect(self, call: Call, ctx: Context) -> HandlerResult:
        """One attempt of a join or batch agent's record: hold its artifact in its join or
        batch; run the handler if that completes it."""
        collector, item = self.spec.collector, call.item
        assert collector is not None
        assert item is not None
        assert item.artifact is not None
        now = self.clock.time()
        fired = collector.add(item.artifact, item.record, ctx.state, now)
        if fired is None:
            return None
        release = collector.release(fired, now)  # a full batch: why, on this record's span
        if release is not None:
            for hook in self.hooks.released:
                hook.released(release, release.queue_wait_ms)
        ctx.inputs = tuple(p.artifact.envelope for p in fired.parts)
        return await self.spec.handler(collector.view(fired), ctx)

    # -- slot accounting -------------------------------------------------------------------
    def free(self) -> None:
        """A call finished (or left its slot): resumed retries waiting get the slot."""
        self.running -= 1
        if self._waiters:
            self._freed.set()

    def give_back(self, item: Item) -> None:
        """Undo :meth:`take` for a record that will not run (left unfinished)."""
        self.free()
        self.intake.done_with(item, None)
        self.intake.release_key(item)
        self.intake.unclaim_replay(item)

    async def lend(self, wait: Callable[[], Awaitable[T]]) -> T:
        """``await wait()`` with the caller's slot free for other records; if it returned
        something, wait for a free slot again (see :meth:`Call.lend_slot`)."""
        self.free()
        self.wake()  # the slot is free for another record
        try:
            result = await wait()
            if result is not None:
                await self._slot_back()
            return result
        finally:
            self.running += 1

    async def _slot_back(self) -> None:
        """Wait for a free slot; a slot that frees is kept for the waiting retries, not given
        to new records."""
        self._waiters += 1
        try:
            while self.running >= self.concurrency and not self.stopping():
                self._freed.clear()
                await self._freed.wait()
        finally:
            self._waiters -= 1

    def hold(self, key: OrderKey) -> bool:
        """Take a slot and ``key``'s turn for a timer (False: no slot may start now, or the
        key is busy: the timer waits for the next check)."""
        cap = self.concurrency
        if self.hooks.slot_limit:
            cap = self.hooks.limit(cap, self.running)
        if self.running >= cap - self._waiters or not self.intake.hold_key(key):
            return False
        self.running += 1
        return True

    def timer_done(self, key: OrderKey) -> None:
        """A timer that held ``key`` finished (its outcome, if any, is queued for commit)."""
        self.free()
        self.intake.release(key)
        self.wake()
        self.tasks.discard(asyncio.current_task())

    def wakeup_waiters(self) -> None:
        """Let resumed retries waiting for a slot look again (a stop)."""
        self._freed.set()
