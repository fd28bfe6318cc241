"""Join timeouts and batch windows of one runner (records that complete a join or fill a batch
run in the runner's handler slots instead).

Every :data:`TIMER_CHECK_S` the runner's loop asks :meth:`CollectorTimers.fire_due`, which
starts a task for every held join or batch whose time is up: a batch whose window closed goes
to the handler, a timed-out join to ``on_timeout`` (or its parts to the DLQ, stage ``join``).
The handler call goes through the same attempt path as a record's
(:meth:`agents.attempt.Attempts.run`): retries, time limit, breaker, rate limit, retry budget
and span. The task holds a handler slot and the key's turn like a record would (ordered agents
serialise per key), and its outcome carries the epochs of the partition's topics at firing
time, so a commit after the partition moved drops it and a zombie's timer is fenced like its
records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from agents.attempt import Attempts, Call
from agents.context import KeyedState
from agents.work import Outcome
from blackboard.errors import JoinError
from blackboard.records import TopicPartition

if TYPE_CHECKING:
    from agents.clock import Clock
    from agents.collect import Collector, Fired
    from agents.partitions import Partitions
    from agents.slots import Slots

#: How often a runner with joins or batches looks for timed-out sets and due batches.
TIMER_CHECK_S = 0.05


class CollectorTimers:
    """Fires the due joins or batches of one runner's collector, on ``clock``.

    Args:
        collector: the agent's join or batch.
        clock: the wall clock of join timeouts and batch windows.
        partitions: epochs and keyed state.
        slots: the handler slots (a timer holds one).
        attempts: runs the handler calls.
        finish: takes an outcome for the next commit.
        now: the event loop's clock.
    """

    def __init__(
        self,
        collector: Collector,
        clock: Clock,
        partitions: Partitions,
        slots: Slots,
        attempts: Attempts,
        finish: Callable[[Outcome], None],
        now: Callable[[], float],
    ) -> None:
        self.collector = collector
        self.clock = clock
        self.partitions = partitions
        self.slots = slots
        self.attempts = attempts
        self.finish = finish
        self.now = now
        self._next_check = 0.0

    def fire_due(self) -> None:
        """Start a timer task for every join or batch whose time is up (a key that is busy
        with a record waits for the next check)."""
        checked = self.now()
        if checked < self._next_check:
            return
        self._next_check = checked + TIMER_CHECK_S
        collector, book, slots = self.collector, self.partitions, self.slots
        now = self.clock.time()
        loop = asyncio.get_running_loop()
        for partition, state in list(book.state.items()):
            epochs = book.epochs_of(partition)
            if not epochs:
                continue
            for state_key in collector.due(state, now):
                key = collector.order_key_of(state_key)
                if slots.hold(key):
                    task = loop.create_task(self._fire(partition, state_key, key, epochs))
                    slots.tasks.add(task)

    async def _fire(
        self, partition: int, state_key: str, key: str, epochs: dict[TopicPartition, int]
    ) -> None:
        """Hand a timed-out join to ``on_timeout`` (or dead-letter its parts), or a batch
        whose window closed to the handler; commit that with the held state's removal."""
        collector, attempts = self.collector, self.attempts
        outcome: Outcome | None = None
        try:
            base = self.partitions.state.get(partition)
            if base is None or not self.partitions.at(epochs):
                return  # the partition moved before the timer ran: its new owner fires it
            taken = KeyedState(base)
            fired = collector.take(state_key, taken, self.clock.time())
            if fired is None:
                outcome = Outcome(None, epochs=epochs)
                self.partitions.keep_writes(taken, partition, outcome)
            elif fired.why == "batch" or collector.on_timeout is not None:
                outcome = await attempts.run(self._call(fired, base, taken, epochs))
            else:
                missing = collector.view(fired).missing  # type: ignore[union-attr]
                error = JoinError(
                    f"join {key!r} timed out after {collector.timeout_s:g}s, missing {missing}"
                )
                outcome = Outcome(
                    None,
                    dead_letters=[
                        attempts.dead_letter(p.record, "join", error) for p in fired.parts
                    ],
                    epochs=epochs,
                )
                self.partitions.keep_writes(taken, partition, outcome)
            if outcome is not None:
                self.finish(outcome)
        finally:
            self.slots.timer_done(key)

    def _call(
        self,
        fired: Fired,
        base: dict[str, bytes],
        taken: KeyedState,
        epochs: dict[TopicPartition, int],
    ) -> Call:
        """The handler call of a released batch or a timed-out join: every attempt starts
        from the held state's removal; failing for good, every part goes to the DLQ."""
        collector = self.collector
        handler = self.slots.spec.handler if fired.why == "batch" else collector.on_timeout
        assert handler is not None
        view = collector.view(fired)
        first = fired.parts[0]
        release = collector.release(fired, self.clock.time())
        assert release is not None
        return Call(
            first.record,
            first.artifact.envelope,
            epochs,
            lambda _call, ctx: handler(view, ctx),
            tuple(p.record for p in fired.parts),
            decision=release,
            queue_wait_ms=release.queue_wait_ms,
            state_base=base,
            state_after=dict(taken.writes),
            inputs=tuple(p.artifact.envelope for p in fired.parts),
        )
