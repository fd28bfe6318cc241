"""The processing loop of one agent in one worker process (docs/DESIGN.md §4). It lives here
once, above the stores, and works the same on every backend.

The runner polls records, admits them to a ready queue, runs handlers concurrently (never
inside an open commit), buffers what finished and commits it — outputs, dead letters, state
writes and offsets — in one :class:`~blackboard.records.AtomicCommit` whenever ``commit_every``
records finished, ``commit_interval_ms`` passed, or the agent went idle.

Its parts, each owning its own state: :class:`~agents.partitions.Partitions` (progress, epochs,
keyed state), :class:`~agents.intake.Intake` (admission, ready queue, per-key turns),
:class:`~agents.slots.Slots` (handler slots), :class:`~agents.attempt.Attempts` (the one
attempt path), :class:`~agents.committer.Committer` (commits and rewinds) and
:class:`~agents.timers.CollectorTimers` (batch windows, join timeouts) and
:class:`~agents.rebalance.Rebalance` (the group's callbacks). Cross-cutting concerns are
:class:`~agents.hooks.Hook`\\ s. This module holds the loop and the life cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from agents.agent import AgentSpec
from agents.attempt import Attempts, pause_until_stop
from agents.breaker import BreakerState, CircuitBreaker
from agents.builtin_hooks import Timed, builtin_hooks, send_attributes
from agents.clock import SYSTEM_CLOCK, Clock
from agents.committer import Committer
from agents.context import Services
from agents.flow import FlowControl
from agents.hooks import Hook, Hooks
from agents.intake import Intake
from agents.llm.client import LLMRuntime, default_runtime
from agents.partitions import Partitions
from agents.rebalance import Rebalance
from agents.settings import RunnerSettings
from agents.slots import Slots
from agents.status_report import StatusReporter
from agents.timers import CollectorTimers
from agents.work import Item, RunnerStats
from blackboard.aio import cancel_and_wait
from blackboard.blackboard import Blackboard
from blackboard.errors import SupersededError
from blackboard.logs import get_logger
from blackboard.records import Record, TopicPartition
from blackboard.store import GroupMember
from observability.spans import AgentInfo
from scheduler.base import ReadyQueue
from scheduler.ledger import Ledger, NullLedger
from scheduler.policies import PolicyLike, as_spec, make_queue
from scheduler.throttle_hooks import agent_limiter

log = get_logger("runner")
T = TypeVar("T")


class AgentRunner:
    """Runs one agent as one member of its consumer group until :meth:`stop`.

    Args:
        board: the blackboard (store, registry, topic names).
        spec: the agent.
        settings: polling and commit settings.
        slot: the worker slot this runner belongs to (stable across restarts: on Kafka it
            names the transactional id, so a restarted slot fences its predecessor).
        clock: the wall clock of join timeouts and batch windows.
        policy: the ready queue's policy unless the agent names one (default ``fifo``).
        ledger: service statistics shared with the worker's other runners (default: own).
        hooks: more hooks, after the built-in ones and the agent's own.
        llm: the model machinery its handlers call through ``ctx.llm`` (None: the process's
            default, :func:`agents.llm.default_runtime`, made on first use).
        resources: what the app's lifespan yielded (``ctx.resources``).
    """

    def __init__(
        self,
        board: Blackboard,
        spec: AgentSpec,
        settings: RunnerSettings | None = None,
        *,
        slot: str = "0",
        clock: Clock = SYSTEM_CLOCK,
        policy: PolicyLike | None = None,
        ledger: Ledger | None = None,
        hooks: Sequence[Hook] = (),
        llm: LLMRuntime | None = None,
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        self.board = board
        self.spec = spec
        self.settings = settings = settings or RunnerSettings()
        self.stats = stats = RunnerStats()
        self.slot = slot
        self._log = log.bind(agent=spec.name)
        self._topics = {board.topics.for_type(t.name): t.name for t in spec.consumes}
        self.group = board.topics.group(spec.name)
        self._member: GroupMember | None = None
        # The scheduling policy's ready queue; intervals are read on the event loop's clock
        # (time.monotonic() on a real loop; virtual time in the simulator).
        self.policy = as_spec(spec.policy if spec.policy is not None else policy)
        if ledger is None:  # a runner of its own: statistics only if its policy reads them
            ledger = NullLedger() if self.policy.parts == (False, "fifo") else Ledger()
        ready: ReadyQueue[Item] = make_queue(self.policy, spec.name, ledger)
        self._now = time.monotonic
        self._stopping = False
        self._stop_requested = asyncio.Event()
        # Set whenever the loop has something to look at: a poll returned, a handler or a
        # commit finished, stop() was called.
        self._wake = asyncio.Event()
        self._status = StatusReporter(board, spec.name, slot, self.group, self._log)
        self._started = asyncio.Event()
        self._poll_task: asyncio.Task[list[Record]] | None = None
        self._commit_task: asyncio.Task[None] | None = None

        self.partitions = book = Partitions()
        self._flow = FlowControl(
            settings.max_buffered, settings.max_offset_window, settings.idle_poll_s
        )
        self._breaker = (
            CircuitBreaker(spec.breaker, self._on_breaker) if spec.breaker is not None else None
        )
        limiter = spec.rate_limit.limiter(self.group) if spec.rate_limit else None
        self._limiter = limiter
        # Backpressure on the types it publishes (scheduler/throttle.py): None while off.
        self.throttle = agent_limiter(
            board, self.group, [t.name for t in spec.publishes], limiter, self._report_status
        )
        now = self._now  # until run() binds the event loop's clock (_bind_clock)
        built = builtin_hooks(
            AgentInfo.of(board, self.group, spec.name, send_attributes(self.throttle)),
            self.throttle or limiter,
            self._breaker,
            spec.retry_budget.tracker() if spec.retry_budget is not None else None,
            now,
            stats,
        )
        self.hooks = Hooks([*built, *spec.hooks, *hooks])

        self._committer = Committer(
            book,
            lambda gone: self._intake.drop_queued(gone),
            self._flow,
            self.hooks,
            stats,
            now,
            self._is_stopping,
            self._forget,
            self._superseded,
            self._log,
        )
        finish = self._committer.finish
        self._attempts = Attempts(
            spec,
            board,
            self.group,
            self.hooks,
            book,
            stats,
            settings.max_record_bytes,
            now,
            self._is_stopping,
            self._pause,
            self._lend_slot,
            self._log,
        )
        self._intake = Intake(
            spec,
            board,
            self._topics,
            book,
            ready,
            self._flow,
            stats,
            finish,
            self._attempts.dead_letter,
            now,
            self.hooks.admitting,
        )
        self._rebalance = Rebalance(book, self._flow, self._intake, self._committer, self._log)
        self._slots = Slots(
            spec.concurrency,
            self.hooks,
            self._intake,
            book,
            self._attempts,
            finish,
            stats,
            now,
            clock,
            self._delivery,
            self._wake.set,
            self._is_stopping,
        )
        self._timers = (
            CollectorTimers(spec.collector, clock, book, self._slots, self._attempts, finish, now)
            if spec.collector is not None
            else None
        )
        self._llm = llm
        self.resources: Mapping[str, Any] = resources or {}

    # -- small accessors the parts share ---------------------------------------------------
    def _bind_clock(self, now: Callable[[], float]) -> None:
        """Read intervals on ``now`` (the event loop's clock, virtual in the simulator): the
        parts get it directly, not through a wrapper, since they read it per record."""
        self._now = now
        for part in (self._committer, self._attempts, self._intake, self._slots):
            part.now = now
        if self._timers is not None:
            self._timers.now = now
        for hook in self.hooks.all:
            if isinstance(hook, Timed):
                hook.now = now

    def _is_stopping(self) -> bool:
        return self._stopping

    async def _pause(self, seconds: float) -> None:
        await pause_until_stop(self._stop_requested, seconds)

    async def _lend_slot(self, wait: Callable[[], Awaitable[T]]) -> T:
        return await self._slots.lend(wait)

    @staticmethod
    def _delivery(record: Record) -> int:
        return 1  # until the member joined (then its own count)

    # -- life cycle -----------------------------------------------------------------------
    async def run(self) -> None:
        """Join the group and process records until :meth:`stop`; then drain and leave."""
        board, spec = self.board, self.spec
        board.ensure_topics(list(spec.consumes) + list(spec.publishes))
        if spec.ordered:  # keyed state lives in a compacted changelog where the store keeps one
            board.store.ensure_topics(
                [board.topics.state(spec.name)], board.settings.partitions, compacted=True
            )
        self._bind_clock(asyncio.get_running_loop().time)
        self._attempts.services = services = self._services()
        if spec.model is not None and services.llm is not None:
            # The agent's model is made now (its SDK imported, its client built): a bad model
            # string stops start-up, and the first record does not pay for it.
            services.llm.runtime.models.get(spec.model)
        if self._limiter is not None:  # a shared limit reaches Redis first (or fails here)
            await self._limiter.open()
        member = await board.store.join(
            self.group, sorted(self._topics), self._rebalance, member_name=self.slot
        )
        self._member = self._committer.member = self._rebalance.member = member
        self._slots.delivery = member.attempt
        self._report_status()  # operators see the agent (circuit closed) before any trouble
        self._started.set()
        self._log.info("agent started", member=member.member_id, topics=sorted(self._topics))
        try:
            await self._loop(member)
            await self._drain()
        finally:
            for task in self._slots.tasks:
                task.cancel()  # only left when run() itself was cancelled or failed
            await member.close()
            if self._limiter is not None:
                await self._limiter.close()
            self._log.info("agent stopped", **dataclasses.asdict(self.stats))

    def _services(self) -> Services:
        """What each handler call's context carries: the resources and the agent's model
        calls (charged to its rate limit, opening its breaker on quota exhausted)."""
        spec = self.spec
        runtime = self._llm if self._llm is not None else default_runtime()
        return Services(
            self.resources,
            runtime.for_agent(
                spec.name,
                model=spec.model,
                limiter=self.throttle or self._limiter,
                breaker=self._breaker,
                budgets=spec.budgets,
            ),
        )

    async def started(self) -> None:
        """Wait until the runner has joined its group."""
        await self._started.wait()

    def stop(self) -> None:
        """Stop polling; in-flight handlers get ``shutdown_grace_s`` to finish. Thread-unsafe:
        call from the runner's event loop (signal handlers do)."""
        self._stopping = self._slots.stopped = True
        self._stop_requested.set()
        self._slots.wakeup_waiters()
        self._wake.set()
        if self._member is not None:
            self._member.wakeup()

    @property
    def idle(self) -> bool:
        """Nothing read is waiting, running (or holding a deferred retry) or uncommitted."""
        return not (
            self._intake.ready
            or self._intake.parked
            or self._slots.running
            or self._slots.tasks
            or self._committer.completed
            or self._commit_task is not None
        )

    async def _loop(self, member: GroupMember) -> None:
        """Poll, handlers and commits overlap: one poll runs in the background (the store's
        call may block a thread), one commit at a time runs while the next records are read and
        processed, and the loop sleeps until one of them or a handler finishes."""
        settings, hooks = self.settings, self.hooks
        intake, slots, committer, book = self._intake, self._slots, self._committer, self.partitions
        interval = settings.commit_interval_ms / 1000.0
        while not self._stopping:
            self._wake.clear()
            hooks.wake_up()  # tracing turned on or off
            poll = self._poll_task
            if poll is not None and poll.done():
                self._poll_task = None
                try:
                    records = self._flow.fresh(poll.result())
                except SupersededError as exc:
                    self._superseded(exc, list(book.progress))
                    break
                if records:
                    intake.admit(records)
                intake.skip_ahead(member.read_positions())
            commit = self._commit_task
            if commit is not None and commit.done():
                self._commit_task = None
                commit.result()  # a failure other than a refused commit ends the runner
            self._flow.update(book.progress, hooks.may_fetch(), self._now())
            if self._poll_task is None:
                self._start_poll(member)
            if self._timers is not None:
                self._timers.fire_due()
            if slots.dispatch():
                await asyncio.sleep(0)  # let new handlers start; fast ones finish right here
            wait = settings.idle_poll_s
            completed = committer.completed
            if completed and self._commit_task is None:
                age = self._now() - committer.first_completed_at
                if (
                    len(completed) >= settings.commit_every
                    or age >= interval
                    or not (slots.running or intake.ready)
                ):
                    self._commit_task = asyncio.create_task(committer.commit())
                    self._commit_task.add_done_callback(self._wake_up)
                else:
                    wait = max(interval - age, 0.001)  # a virtual clock never outruns 1e-18
            if hooks.wake_in:  # an open breaker's cool-down, a rate limit's next turn
                again = hooks.wake_in_s(self._now())
                if again is not None:
                    wait = min(wait, again)
            hold = committer.poll_hold_until
            if self._poll_task is None and hold > self._now():
                wait = min(wait, hold - self._now() + 0.001)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _wake_up(self, _: object = None) -> None:
        self._wake.set()

    def _start_poll(self, member: GroupMember) -> None:
        """Tell the member about pauses and seeks, then start the next poll if there is room
        (or every partition is paused: the poll then only serves the group's callbacks), unless
        a failed commit's backoff holds reading."""
        if self._now() < self._committer.poll_hold_until:
            return
        progress = self.partitions.progress
        self._flow.apply(member)
        room = self._flow.room(progress)
        if room or self._flow.all_paused(progress):
            batch = max(1, min(self.settings.poll_batch, room))
            self._poll_task = asyncio.create_task(member.poll(batch, self.settings.idle_poll_s))
            self._poll_task.add_done_callback(self._wake_up)

    async def _drain(self) -> None:
        """After stop: let running handlers finish within the grace period, commit, leave."""
        if self._poll_task is not None:  # stop() woke it: start what it read, if slots are free
            poll, self._poll_task = self._poll_task, None
            records = self._flow.fresh(await poll)
            if records:
                self._intake.admit(records)
                self._slots.dispatch()
        tasks = self._slots.tasks
        if tasks:
            self._log.info("draining", in_flight=len(tasks), grace_s=self.settings.shutdown_grace_s)
            _, pending = await asyncio.wait(set(tasks), timeout=self.settings.shutdown_grace_s)
            if pending:
                await cancel_and_wait(pending)
                self._log.warning(
                    "gave up on handlers past the grace period", abandoned=len(pending)
                )
        if self._commit_task is not None:
            await self._commit_task
            self._commit_task = None
        await self._committer.commit()

    # -- rebalance --------------------------------------------------------------------------
    def _forget(self, partitions: Sequence[TopicPartition]) -> None:
        self._rebalance.forget(partitions)

    def _superseded(self, exc: SupersededError, partitions: Sequence[TopicPartition]) -> None:
        """Another process took over this worker slot: drop the work and stop."""
        self._log.error("a newer process took over this worker slot; stopping", error=str(exc))
        self._forget(partitions)
        self.stop()

    # -- status ---------------------------------------------------------------------------
    def _on_breaker(self, state: BreakerState, breaker: CircuitBreaker) -> None:
        """Log a breaker transition, wake the loop and publish the agent's status."""
        self._status.breaker_changed(state, breaker)
        self.hooks.wake_up()  # open: the breaker's gate points are called again; closed: not
        self._wake.set()
        if state != "half_open":
            self._report_status()

    def _report_status(self) -> None:
        """Publish the breaker and backpressure state for ``blackboard lag`` and the dashboard."""
        self._status.report(self._breaker, self.throttle)
