"""Join timeouts and batch windows of one runner (the runner's timer part; records that
complete a join or fill a batch run in the runner's handler slots instead).

Every :data:`TIMER_CHECK_S` the runner's loop asks :meth:`CollectorTimers.fire_due`, which
starts a task for every held join or batch whose time is up: a batch whose window closed goes
to the handler, a timed-out join to ``on_timeout`` (or its parts to the DLQ, stage ``join``).
The task holds the key's turn like a record would (ordered agents serialise per key), and its
outcome carries the epochs of the partition's topics at firing time, so a commit after the
partition moved drops it and a zombie's timer is fenced like its records.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from agents.clock import Clock
from agents.collect import Collector, Fired
from agents.context import Context, KeyedState
from agents.work import Outcome
from blackboard.errors import JoinError
from blackboard.records import TopicPartition
from observability import tracing

if TYPE_CHECKING:
    from agents.runner import AgentRunner

#: How often a runner with joins or batches looks for timed-out sets and due batches.
TIMER_CHECK_S = 0.05


class CollectorTimers:
    """Fires the due joins or batches of ``runner``'s collector, on ``clock``."""

    def __init__(self, runner: AgentRunner, collector: Collector, clock: Clock) -> None:
        self.runner = runner
        self.collector = collector
        self.clock = clock
        self._next_check = 0.0

    def fire_due(self) -> None:
        """Start a timer task for every join or batch whose time is up (a key that is busy
        with a record waits for the next check)."""
        runner, collector = self.runner, self.collector
        checked = runner._now()
        if checked < self._next_check:
            return
        self._next_check = checked + TIMER_CHECK_S
        now = self.clock.time()
        loop = asyncio.get_running_loop()
        for partition, state in list(runner._state.items()):
            tps = {tp: runner._epoch[tp] for tp in runner._progress if tp.partition == partition}
            if not tps:
                continue
            for state_key in collector.due(state, now):
                key = collector.order_key_of(state_key)
                if runner._hold_key(key):
                    runner._tasks.add(loop.create_task(self._fire(partition, state_key, key, tps)))

    async def _fire(
        self, partition: int, state_key: str, key: str, epochs: dict[TopicPartition, int]
    ) -> None:
        """Hand a timed-out join to ``on_timeout`` (or dead-letter its parts), or a batch
        whose window closed to the handler; commit that with the held state's removal."""
        runner, collector = self.runner, self.collector
        outcome = Outcome(None, epochs=epochs)
        try:
            base = runner._state.get(partition)
            if base is None or not runner._settles(outcome):
                return  # the partition moved before the timer ran: its new owner fires it
            state = KeyedState(base)
            fired = collector.take(state_key, state, self.clock.time())
            if fired is not None:
                handler = runner.spec.handler if fired.why == "batch" else collector.on_timeout
                if handler is None:
                    missing = collector.view(fired).missing  # type: ignore[union-attr]
                    error = JoinError(
                        f"join {key!r} timed out after {collector.timeout_s:g}s, missing {missing}"
                    )
                    outcome.dead_letters = [
                        runner._dead_letter(p.record, "join", error) for p in fired.parts
                    ]
                else:
                    await self._run(handler, fired, state, outcome)
            runner._apply_state(state, partition, outcome)
            runner._finish(outcome)
        finally:
            runner._timer_done(key)

    async def _run(self, handler: Any, fired: Fired, state: KeyedState, outcome: Outcome) -> None:
        """Run a timer's handler once, in a process span saying why it was released; its
        outputs, or every part dead-lettered if it fails."""
        runner, collector = self.runner, self.collector
        first = fired.parts[0]
        release = collector.release(fired, self.clock.time())
        assert release is not None
        span = tracing.released(
            runner, first.record, first.artifact.envelope, release, release.queue_wait_ms
        )
        ctx = Context(
            runner.spec,
            runner.board.registry,
            first.artifact.envelope,
            first.record,
            attempt=1,
            inputs=tuple(p.artifact.envelope for p in fired.parts),
        )
        ctx._state = state
        try:
            async with asyncio.timeout(runner.spec.retry.timeout_s):
                result = await handler(collector.view(fired), ctx)
            outcome.outputs = runner._outputs(ctx, result)
            span.end()
        except Exception as exc:
            span.end(exc, stage="process")
            runner._log.warning(
                "timer handler failed", key=fired.key, error=f"{type(exc).__name__}: {exc}"
            )
            outcome.outputs = []
            outcome.dead_letters = [
                runner._dead_letter(p.record, "process", exc) for p in fired.parts
            ]
