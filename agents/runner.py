"""The processing loop of one agent in one worker process (DESIGN.md §4). It lives here once,
above the stores, and works the same on every backend.

The runner polls records, admits them to a ready queue, runs handlers concurrently (never
inside an open commit), buffers what finished and commits it — outputs, dead letters, state
writes and offsets — in one :class:`~blackboard.records.AtomicCommit` whenever ``commit_every``
records finished, ``commit_interval_ms`` passed, or the agent went idle.

Within a partition records may finish out of order: the committed offset is the lowest
unfinished one, and the finished offsets above it ride in the commit metadata
(:mod:`blackboard.offsets`). Every partition has an *epoch* that changes when the runner loses
or rewinds it, so results of handlers that were running at that moment are dropped instead of
committed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agents.agent import AgentSpec, HandlerResult
from agents.breaker import BreakerState, CircuitBreaker
from agents.clock import SYSTEM_CLOCK, Clock
from agents.collect import Collector
from agents.context import Context, KeyedState
from agents.flow import FlowControl
from agents.status_report import StatusReporter
from agents.timers import CollectorTimers
from agents.work import Item, OrderKey, Outcome, RunnerStats, plan_commit
from blackboard.aio import cancel_and_wait
from blackboard.artifacts import Artifact
from blackboard.blackboard import Blackboard
from blackboard.dlq import ReplayInfo, Stage, dead_letter, replay_info
from blackboard.errors import (
    CommitError,
    DecodeError,
    InvalidArtifactError,
    JoinError,
    RecordTooLargeError,
    SupersededError,
)
from blackboard.logs import get_logger
from blackboard.offsets import PartitionProgress
from blackboard.records import (
    OutgoingRecord,
    Record,
    StateUpdate,
    TopicPartition,
    envelope_headers_bound,
    oversize,
)
from blackboard.store import MAX_RECORD_BYTES, GroupMember
from blackboard.wire import decode
from observability import tracing
from scheduler.base import Admission, ReadyQueue
from scheduler.fifo import PlainFifoQueue
from scheduler.joins import completes_join
from scheduler.ledger import Ledger, NullLedger
from scheduler.policies import PolicyLike, as_spec, make_queue
from scheduler.retrybudget import Deferral, RetryBudgets
from scheduler.throttle import agent_limiter

log = get_logger("runner")
#: Backoff before reading again after a failed commit, doubling while commits keep failing.
FIRST_COMMIT_BACKOFF_S = 0.05
MAX_COMMIT_BACKOFF_S = 5.0
#: A handler slot gives the event loop a turn after this many records in a row ...
SLOT_BURST = 16
#: ... or after this long, whichever comes first.
SLOT_SLICE_S = 0.002


class RunnerSettings(BaseModel):
    """How a runner polls and commits. Defaults suit both the embedded store and Kafka."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    commit_every: int = Field(default=100, ge=1, description="commit after this many finished")
    commit_interval_ms: float = Field(default=100.0, gt=0, description="or after this long")
    poll_batch: int = Field(default=500, ge=1, description="most records one poll returns")
    max_buffered: int = Field(
        default=2000, ge=1, description="records read but not finished before fetching pauses"
    )
    max_offset_window: int = Field(
        default=1000,
        ge=10,
        description="how far a partition may run ahead of its lowest unfinished",
    )
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="time in-flight handlers get to finish"
    )
    idle_poll_s: float = Field(default=1.0, gt=0, description="longest wait in one poll")
    max_record_bytes: int = Field(
        default=MAX_RECORD_BYTES - 50_000,
        ge=1024,
        description="largest output value (headroom for headers)",
    )


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
    ) -> None:
        self.board = board
        self._clock = clock
        self._poll_hold_until = 0.0
        self._commit_backoff = FIRST_COMMIT_BACKOFF_S
        self.spec = spec
        self.settings = settings or RunnerSettings()
        self.stats = RunnerStats()
        self.slot = slot
        self._log = log.bind(agent=spec.name)
        self._topics = {board.topics.for_type(t.name): t.name for t in spec.consumes}
        self.group = board.topics.group(spec.name)
        self._member: GroupMember | None = None
        self._progress: dict[TopicPartition, PartitionProgress] = {}
        self._epoch: dict[TopicPartition, int] = {}
        self._state: dict[int, dict[str, bytes]] = {}
        # The scheduling policy's ready queue; intervals are read on the event loop's clock
        # (time.monotonic() on a real loop; virtual time in the simulator).
        self.policy = as_spec(spec.policy if spec.policy is not None else policy)
        if ledger is None:  # a runner of its own: statistics only if its policy reads them
            ledger = NullLedger() if self.policy.parts == (False, "fifo") else Ledger()
        self._ready: ReadyQueue[Item] = make_queue(self.policy, spec.name, ledger)
        self._plain_queue = isinstance(self._ready, PlainFifoQueue)
        self._join_probe = spec.collector is not None and spec.collector.kind == "join"
        self._limiter = spec.rate_limit.limiter(self.group) if spec.rate_limit else None
        # Backpressure on the types it publishes (scheduler/throttle.py): None while off.
        self.throttle = agent_limiter(
            board, self.group, [t.name for t in spec.publishes], self._limiter, self._report_status
        )
        self._limiter = self.throttle or self._limiter
        self._limit_until = 0.0
        self._retry_budget = spec.retry_budget.tracker() if spec.retry_budget else None
        self._now = time.monotonic
        self._parked: dict[OrderKey, deque[Item]] = {}
        self._running_keys: set[OrderKey] = set()
        self._completed: list[Outcome] = []
        self._first_completed_at = 0.0
        self._running = 0
        # Resumed retries waiting for a handler slot, and the event a freed slot sets.
        self._slot_waiters = 0
        self._slot_freed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flow = FlowControl(
            self.settings.max_buffered, self.settings.max_offset_window, self.settings.idle_poll_s
        )
        self._poll_task: asyncio.Task[list[Record]] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._replaying: set[str] = set()
        self._status = StatusReporter(board, spec.name, slot, self.group, self._log)
        self._started = asyncio.Event()
        self._breaker = (
            CircuitBreaker(spec.breaker, self._on_breaker) if spec.breaker is not None else None
        )
        self._timers = (
            CollectorTimers(self, spec.collector, clock) if spec.collector is not None else None
        )
        # Set whenever the loop has something to look at: a poll returned, a handler or a
        # commit finished, stop() was called.
        self._wake = asyncio.Event()

    # -- life cycle -----------------------------------------------------------------------
    async def run(self) -> None:
        """Join the group and process records until :meth:`stop`; then drain and leave."""
        board, spec = self.board, self.spec
        board.ensure_topics(list(spec.consumes) + list(spec.publishes))
        if spec.ordered:  # keyed state lives in a compacted changelog where the store keeps one
            board.store.ensure_topics(
                [board.topics.state(spec.name)], board.settings.partitions, compacted=True
            )
        self._now = asyncio.get_running_loop().time
        if self._limiter is not None:  # a shared limit reaches Redis first (or fails here)
            await self._limiter.open()
        member = await board.store.join(
            self.group, sorted(self._topics), self, member_name=self.slot
        )
        self._member = member
        self._report_status()  # operators see the agent (circuit closed) before any trouble
        self._started.set()
        self._log.info("agent started", member=member.member_id, topics=sorted(self._topics))
        try:
            await self._loop(member)
            await self._drain()
        finally:
            for task in self._tasks:
                task.cancel()  # only left when run() itself was cancelled or failed
            await member.close()
            if self._limiter is not None:
                await self._limiter.close()
            self._log.info("agent stopped", **_stats(self.stats))

    async def started(self) -> None:
        """Wait until the runner has joined its group."""
        await self._started.wait()

    def stop(self) -> None:
        """Stop polling; in-flight handlers get ``shutdown_grace_s`` to finish. Thread-unsafe:
        call from the runner's event loop (signal handlers do)."""
        self._stopping = True
        self._stop_requested.set()
        self._slot_freed.set()
        self._wake.set()
        if self._member is not None:
            self._member.wakeup()

    @property
    def idle(self) -> bool:
        """Nothing read is waiting, running (or holding a deferred retry) or uncommitted."""
        return not (
            self._ready
            or self._parked
            or self._running
            or self._tasks
            or self._completed
            or self._commit_task is not None
        )

    async def _loop(self, member: GroupMember) -> None:
        """Poll, handlers and commits overlap: one poll runs in the background (the store's
        call may block a thread), one commit at a time runs while the next records are read and
        processed, and the loop sleeps until one of them or a handler finishes."""
        settings = self.settings
        interval = settings.commit_interval_ms / 1000.0
        while not self._stopping:
            self._wake.clear()
            poll = self._poll_task
            if poll is not None and poll.done():
                self._poll_task = None
                try:
                    records = self._flow.fresh(poll.result())
                except SupersededError as exc:
                    self._superseded(exc, list(self._progress))
                    break
                if records:
                    self._admit(records)
                self._skip_ahead(member.read_positions())
            commit = self._commit_task
            if commit is not None and commit.done():
                self._commit_task = None
                commit.result()  # a failure other than a refused commit ends the runner
            self._flow.update(
                self._progress,
                self._breaker is None or self._breaker.state == "closed",
                self._now(),
            )
            if self._poll_task is None:
                self._start_poll(member)
            if self._timers is not None:
                self._timers.fire_due()
            if self._dispatch():
                await asyncio.sleep(0)  # let new handlers start; fast ones finish right here
            wait = settings.idle_poll_s
            if self._completed and self._commit_task is None:
                age = self._now() - self._first_completed_at
                if (
                    len(self._completed) >= settings.commit_every
                    or age >= interval
                    or not (self._running or self._ready)
                ):
                    self._commit_task = asyncio.create_task(self._commit())
                    self._commit_task.add_done_callback(self._wake_up)
                else:
                    wait = max(interval - age, 0.001)  # a virtual clock never outruns 1e-18
            if self._breaker is not None and self._breaker.state == "open":
                wait = min(wait, max(self._breaker.wait_s(), 0.001))
            if self._poll_task is None and self._poll_hold_until > self._now():
                wait = min(wait, self._poll_hold_until - self._now() + 0.001)
            if self._limit_until and self._ready:  # a rate limit holds the next handler
                wait = min(wait, max(self._limit_until - self._now(), 0.0) + 0.001)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _wake_up(self, _: object = None) -> None:
        self._wake.set()

    def _start_poll(self, member: GroupMember) -> None:
        """Tell the member about pauses and seeks, then start the next poll if there is room
        (or every partition is paused: the poll then only serves the group's callbacks), unless
        a failed commit's backoff holds reading."""
        if self._now() < self._poll_hold_until:
            return
        self._flow.apply(member)
        room = self._flow.room(self._progress)
        if room or self._flow.all_paused(self._progress):
            batch = max(1, min(self.settings.poll_batch, room))
            self._poll_task = asyncio.create_task(member.poll(batch, self.settings.idle_poll_s))
            self._poll_task.add_done_callback(self._wake_up)

    async def _drain(self) -> None:
        """After stop: let running handlers finish within the grace period, commit, leave."""
        if self._poll_task is not None:  # stop() woke it: start what it read, if slots are free
            poll, self._poll_task = self._poll_task, None
            records = self._flow.fresh(await poll)
            if records:
                self._admit(records)
                self._dispatch()
        if self._tasks:
            self._log.info(
                "draining", in_flight=len(self._tasks), grace_s=self.settings.shutdown_grace_s
            )
            _, pending = await asyncio.wait(
                set(self._tasks), timeout=self.settings.shutdown_grace_s
            )
            if pending:
                await cancel_and_wait(pending)
                self._log.warning(
                    "gave up on handlers past the grace period", abandoned=len(pending)
                )
        if self._commit_task is not None:
            await self._commit_task
            self._commit_task = None
        await self._commit()

    # -- rebalance listener ---------------------------------------------------------------
    async def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """Start tracking newly owned partitions from their committed offsets and metadata."""
        assert self._member is not None
        committed = await self._member.committed(partitions)
        for tp in partitions:
            done = committed.get(tp)
            self._progress[tp] = (
                PartitionProgress(done.offset, done.metadata) if done else PartitionProgress(0)
            )
            self._epoch[tp] = self._epoch.get(tp, 0) + 1
            if tp.partition not in self._state:  # keyed state, and the replays settled
                self._state[tp.partition] = await self._member.load_state(tp.partition)
        self._log.info("partitions assigned", partitions=_names(partitions))

    async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """Commit what finished, then let the partitions go."""
        await self._commit()
        self._forget(partitions)
        self._log.info("partitions revoked", partitions=_names(partitions))

    async def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        """Drop the partitions' uncommitted work: another member owns them already."""
        self._forget(partitions)
        self._log.warning("partitions lost", partitions=_names(partitions))

    def _forget(self, partitions: Sequence[TopicPartition]) -> None:
        gone = set(partitions)
        for tp in gone:
            self._progress.pop(tp, None)
            self._epoch[tp] = self._epoch.get(tp, 0) + 1
            self._flow.forget(tp)
        self._drop_queued(gone)
        still = {tp.partition for tp in self._progress}
        for p in [p for p in self._state if p not in still]:
            del self._state[p]

    def _drop_queued(self, gone: set[TopicPartition]) -> None:
        """Drop queued and parked records of ``gone`` partitions, and free the keys whose
        turn-holder was dropped (ordered agents), so later records of those keys still run."""
        for item in [i for i in self._ready if i.tp in gone]:
            self._unclaim_replay(item)
        for parked in self._parked.values():
            for item in parked:
                if item.tp in gone:
                    self._unclaim_replay(item)
        self._ready.drop(lambda i: i.tp in gone)
        if not self.spec.ordered:
            return
        holding = {i.key for i in self._ready} | self._running_keys
        for key in list(self._parked):
            queue = deque(i for i in self._parked[key] if i.tp not in gone)
            if key in holding:
                self._parked[key] = queue
            elif queue:
                self._queue(queue.popleft())
                self._parked[key] = queue
            else:
                del self._parked[key]

    # -- admission and dispatch -----------------------------------------------------------
    def _admit(self, records: list[Record]) -> None:
        progress, epochs, registry = self._progress, self._epoch, self.board.registry
        topics, collector, ordered = self._topics, self.spec.collector, self.spec.ordered
        plain = self._plain_queue
        touched: set[TopicPartition] = set()
        polled = time.monotonic()
        tp = TopicPartition("", -1)
        prog: PartitionProgress | None = None
        for rec in records:
            if rec.partition != tp.partition or rec.topic != tp.topic:  # runs share a partition
                tp = TopicPartition(rec.topic, rec.partition)
                prog = progress.get(tp)
                if prog is not None:
                    touched.add(tp)
            if prog is None:
                continue
            if not prog.start(rec.offset):
                self.stats.skipped += 1
                continue
            item = Item(rec, tp, epochs[tp], None, None, rec.key, polled)
            if rec.raw_headers:  # a replayed record has bb.replay.* headers
                # Before decoding: a replay is only its agent's to run, even one that fails
                # to decode again (that returns to the DLQ with its history, once).
                replay = replay_info(rec)
                if replay is not None:
                    if not self._admit_replay(replay, rec.partition):
                        self._finish(Outcome(item))  # another agent's, or settled before
                        continue
                    item.replay = replay
            try:
                art = decode(rec, registry)
                if art.envelope.type != topics[rec.topic]:
                    raise DecodeError(
                        f"record {rec.topic}[{rec.partition}]@{rec.offset} says it is a "
                        f"{art.envelope.type}, but the topic holds {topics[rec.topic]}"
                    )
            except DecodeError as exc:
                self._reject(item, "deserialize", exc)
                continue
            except InvalidArtifactError as exc:
                self._reject(item, "validate", exc)
                continue
            item.artifact = art
            if collector is not None:
                try:
                    item.key = collector.order_key(art)
                    collector.check_partition(item.key, rec, self.board.settings.partitions)
                except JoinError as exc:
                    self._reject(item, "join", exc)
                    continue
                except Exception as exc:  # the agent's key function failed on this artifact
                    self._reject(item, "process", exc)
                    continue
            if ordered:
                parked = self._parked.get(item.key)
                if parked is not None:
                    parked.append(item)
                    continue
                self._parked[item.key] = deque()
            if plain:
                self._ready.push(item, None, 0.0)  # type: ignore[arg-type]
            else:
                self._queue(item)
        self._flow.check_windows(touched, progress)

    def _skip_ahead(self, positions: dict[TopicPartition, int]) -> None:
        """Move partitions past what the store's log holds beyond their records (Kafka's
        transaction markers), as the last poll saw it; a partition with nothing in flight
        that moved gets an offsets-only commit, so a drained group's lag reaches 0."""
        for tp, position in positions.items():
            prog = self._progress.get(tp)
            if prog is None or self._flow.seeking(tp):  # rewound while that poll ran
                continue
            if prog.skip_to(position) and not prog.in_flight:
                self._finish(Outcome(None, epochs={tp: self._epoch[tp]}))

    def _admit_replay(self, replay: ReplayInfo, partition: int) -> bool:
        """Whether a record replayed from a DLQ is this agent's to run: it was dead-lettered
        by this agent (other agents reading the topic processed it already), this replay was
        not settled before, and the artifact was not processed after another replay (replays
        never duplicate)."""
        if replay.agent != self.spec.name:
            self.stats.skipped += 1
            return False
        settled = self._state.get(partition, {})
        key, done = replay.entry_key, replay.artifact_key
        if key in self._replaying or key in settled or (done is not None and done in settled):
            self.stats.skipped += 1
            return False
        self._replaying.add(key)
        return True

    def _unclaim_replay(self, item: Item) -> None:
        """A replayed record left before it ran: it is admitted again when read again."""
        if item.replay is not None:
            self._replaying.discard(item.replay.entry_key)

    def _reject(self, item: Item, stage: Stage, exc: Exception) -> None:
        """Dead-letter a record no handler may see (it does not decode, validate or key); a
        replayed one keeps its attempts and first failure, and its replay is settled."""
        replay = item.replay
        outcome = Outcome(
            item,
            dead_letter=self._dead_letter(
                item.record,
                stage,
                exc,
                attempt=replay.attempts + 1 if replay is not None else 1,
                first_failure_ts=replay.first_failure_ts if replay is not None else None,
            ),
        )
        if replay is not None:
            self._settle_replay(item, outcome)
        self._finish(outcome)

    def _dispatch(self) -> int:
        """Start a handler slot for each ready record while slots are free; how many started.
        A slot goes on with the next ready record when its record finishes (see :meth:`_slot`),
        so under a backlog this starts nothing: the running slots take the work."""
        loop = asyncio.get_running_loop()
        started = 0
        while True:
            item = self._take()
            if item is None:
                return started
            task = loop.create_task(self._slot(item))
            self._tasks.add(task)
            started += 1

    def _take(self) -> Item | None:
        """The next ready record that may start now, counted as running; None if none may
        (nothing ready, every slot busy, a rate limit or an open circuit holds it)."""
        cap = self.spec.concurrency
        breaker = self._breaker
        if breaker is not None and breaker.state != "closed":
            # Open: nothing starts until the cool-down is over; then one record at a time
            # goes to take the trial call (records already running wait for it in _permit).
            cap = 1 if breaker.wait_s() == 0 and not self._running else 0
        ready, epochs, limiter = self._ready, self._epoch, self._limiter
        cap -= self._slot_waiters  # slots kept for resumed retries
        while ready and self._running < cap:
            now = self._now()
            if limiter is not None:
                wait = limiter.wait_s(now)
                self._limit_until = now + wait if wait > 0 else 0.0
                if wait > 0:
                    return None
            item, decision = ready.pop(now)
            item.decision = decision
            if decision.overtaken:
                self.stats.deferred += 1
            if epochs.get(item.tp) != item.epoch:
                self._done_with(item, None)
                self._release_key(item)
                self._unclaim_replay(item)
                continue
            if limiter is not None:
                limiter.started(now)
            self._running += 1
            if self.spec.ordered:
                self._running_keys.add(item.key)
            return item
        return None

    async def _slot(self, item: Item) -> None:
        """Run ``item``, then the next ready record, and so on until none may start or a stop
        is asked: one task runs many records in a row (a task per record costs ~4 us, as much
        as the rest of the runner's work on it). The slot gives the event loop a turn every
        :data:`SLOT_BURST` records or :data:`SLOT_SLICE_S`, so polls and commits keep going."""
        now = self._now
        ran, slice_end = 0, now() + SLOT_SLICE_S
        context = contextvars.copy_context()  # what a task of its own would start with
        try:
            while True:
                await self._execute(item)
                if (
                    self._stopping
                    or self._limiter is not None
                    or contextvars.copy_context() != context
                ):
                    # A rate-limited agent takes one record per slot: the tokens its records
                    # report arrive after their calls, so each waits for its turn in the loop.
                    # A handler that set a context variable (e.g. structlog's bound context)
                    # must not leak it into the next record: that one gets a fresh task.
                    return
                next_item = self._take()
                if next_item is None:
                    return
                item = next_item
                ran += 1
                if ran >= SLOT_BURST or now() >= slice_end:
                    try:
                        await asyncio.sleep(0)
                    except BaseException:
                        self._give_back(item)  # cancelled before it ran: read again later
                        raise
                    ran, slice_end = 0, now() + SLOT_SLICE_S
        finally:
            self._tasks.discard(asyncio.current_task())

    def _free_slot(self) -> None:
        """A handler slot's record finished (or left it): resumed retries waiting get it."""
        self._running -= 1
        if self._slot_waiters:
            self._slot_freed.set()

    def _give_back(self, item: Item) -> None:
        """Undo :meth:`_take` for a record that will not run (left unfinished)."""
        self._free_slot()
        self._done_with(item, None)
        self._release_key(item)
        self._unclaim_replay(item)

    def _queue(self, item: Item) -> None:
        """Put an admitted record in the policy's ready queue."""
        if self._plain_queue:  # nothing to tell a plain fifo queue
            self._ready.push(item, None, 0.0)  # type: ignore[arg-type]
            return
        art = item.artifact
        assert art is not None
        env = art.envelope
        completes = False
        if self._join_probe and isinstance(item.key, str):
            assert self.spec.collector is not None
            completes = completes_join(
                self.spec.collector.wanted,
                self._state.get(item.record.partition, {}),
                item.key,
                env.type,
            )
        item.info = Admission(
            self.spec.name, env.correlation_id, env.tenant, env.type, art.payload, completes
        )
        self._ready.push(item, item.info, self._now())

    def _done_with(self, item: Item, service_s: float | None) -> None:
        """Tell the policy a record it released is done (its service time, if it ran)."""
        if item.info is not None and item.decision is not None:
            self._ready.finished(item.info, item.decision, service_s)

    def _release_key(self, item: Item) -> None:
        if self.spec.ordered:
            self._release(item.key)

    def _release(self, key: OrderKey) -> None:
        """The holder of ``key`` finished: the next record parked behind it becomes ready."""
        self._running_keys.discard(key)
        parked = self._parked.get(key)
        if parked:
            self._queue(parked.popleft())
        else:
            self._parked.pop(key, None)

    async def _execute(self, item: Item) -> None:
        """Run the handler for one record, retrying as the agent's policy says; finish the
        record with its outputs or its dead letter. A record whose retry is cut short (stop
        requested, partition gone) is left unfinished: it is read again later."""
        art = item.artifact
        assert art is not None
        rec = item.record
        spec, policy, registry = self.spec, self.spec.retry, self.board.registry
        attempt = self._member.attempt(rec) if self._member is not None else 1
        prior = item.replay.attempts if item.replay is not None else 0
        first_failure = item.replay.first_failure_ts if item.replay is not None else None
        outcome: Outcome | None = None
        service = 0.0
        budget, note = self._retry_budget, None  # note: a deferred retry's span decision
        if budget is not None:
            budget.first_attempt(art.envelope, self._now())
        try:
            while outcome is None:
                breaker = self._breaker
                if (
                    (breaker is not None and breaker.state != "closed")
                    or self._epoch.get(item.tp) != item.epoch
                ) and not await self._permit(item):
                    return  # stopping, or the partition moved: unfinished, read again later
                ctx = Context(spec, registry, art.envelope, rec, attempt, [])
                if spec.ordered:
                    ctx._state_base = self._state.get(rec.partition)
                # No Timeout object (nor its current_task() lookup) per call unless one is set.
                limit = asyncio.timeout(policy.timeout_s) if policy.timeout_s else None
                span = tracing.process(
                    self,
                    rec,
                    art.envelope,
                    attempt,
                    item.polled_at,
                    note or (item.decision if item.decision is not None else tracing.ADMITTED),
                )
                called = self._now()
                try:
                    try:
                        if limit is None:
                            result = await self._call(art, rec, ctx)
                        else:
                            async with limit:
                                result = await self._call(art, rec, ctx)
                    finally:
                        service += self._now() - called
                        if self._limiter is not None:
                            self._limiter.used_tokens(self._now(), ctx.tokens)
                    outcome = Outcome(item, self._outputs(ctx, result))
                    if ctx._state is not None:
                        self._apply_state(ctx._state, rec.partition, outcome)
                    span.end()
                    if self._breaker is not None:
                        self._breaker.succeeded()
                except RecordTooLargeError as exc:  # the output, not a dependency, is at fault
                    if self._breaker is not None:
                        self._breaker.released()
                    span.end(exc, stage="produce")
                    outcome = Outcome(item, dead_letter=self._dead_letter(rec, "produce", exc))
                except Exception as exc:
                    if self._breaker is not None:
                        if item.replay is None:
                            self._breaker.failed()
                        else:  # a known-bad record an operator replayed: no verdict on the
                            self._breaker.released()  # dependency, so replays cannot stall it
                    first_failure = first_failure or time.time()
                    expired = limit is not None and limit.expired()
                    stage: Stage = "timeout" if expired else "process"
                    retry = (
                        attempt < policy.max_attempts
                        and policy.retryable(exc)
                        and not self._stopping
                    )
                    self._log.warning(
                        "handler failed",
                        artifact_id=art.envelope.id,
                        attempt=attempt,
                        stage=stage,
                        retry=retry,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    span.end(exc, stage=stage, retry=retry)
                    if retry:
                        self.stats.retries += 1
                        if not await self._pause_for(policy.backoff_s(attempt), item):
                            return
                        note = None
                        if budget is not None and not budget.allow(art.envelope, self._now()):
                            note = await self._defer_retry(budget, item)
                            if note is None:
                                return
                        if self._limiter is not None and not await self._rate_turn(item):
                            return
                        attempt += 1
                        continue
                    outcome = Outcome(
                        item,
                        dead_letter=self._dead_letter(
                            rec,
                            stage,
                            exc,
                            attempt=prior + attempt,
                            first_failure_ts=first_failure,
                        ),
                    )
        except asyncio.CancelledError:
            if self._breaker is not None:
                self._breaker.released()
            raise
        finally:
            self._free_slot()
            if item.info is not None:
                self._done_with(item, service if outcome is not None else None)
            if item.replay is not None:
                self._settle_replay(item, outcome)
            if outcome is not None:
                self._finish(outcome)
            self._release_key(item)
            self._wake.set()

    def _settle_replay(self, item: Item, outcome: Outcome | None) -> None:
        """A replayed record finished (processed or dead-lettered again): note the replay in
        the partition's state, committed with its offset, so another copy of it is skipped;
        processed, note the artifact too, so a replay of any of its dead letters is."""
        replay = item.replay
        assert replay is not None
        self._replaying.discard(replay.entry_key)
        if outcome is None:
            return  # left unfinished: read (and admitted) again later
        partition = item.record.partition
        keys = [replay.entry_key]
        if outcome.dead_letter is None and replay.artifact_key is not None:
            keys.append(replay.artifact_key)
        base = self._state.get(partition)
        for key in keys:
            outcome.add_state(StateUpdate(partition, key, b"1"))
            if base is not None and self._settles(outcome):
                base[key] = b"1"

    # -- join timeouts and batch windows (agents/timers.py) ---------------------------------
    def _hold_key(self, key: OrderKey) -> bool:
        """Take ``key``'s turn for a timer, as a running record would (False: it is busy)."""
        if key in self._running_keys or key in self._parked:
            return False
        self._running_keys.add(key)
        self._parked[key] = deque()
        self._running += 1
        return True

    def _timer_done(self, key: OrderKey) -> None:
        """A timer that held ``key`` finished (its outcome, if any, is queued for commit)."""
        self._free_slot()
        self._release(key)
        self._wake.set()
        self._tasks.discard(asyncio.current_task())

    def _call(
        self, art: Artifact[BaseModel], rec: Record, ctx: Context
    ) -> Awaitable[HandlerResult]:
        """The handler call of one attempt (through the join or batch for collectors)."""
        collector = self.spec.collector
        if collector is None:
            return self.spec.handler(art.payload, ctx)
        return self._collect(collector, art, rec, ctx)

    async def _collect(
        self, collector: Collector, art: Artifact[BaseModel], rec: Record, ctx: Context
    ) -> HandlerResult:
        """Hold ``art`` in its join or batch; run the handler if that completes it."""
        now = self._clock.time()
        fired = collector.add(art, rec, ctx.state, now)
        if fired is None:
            return None
        release = collector.release(fired, now)  # a full batch: why, on this record's span
        if release is not None:
            tracing.redecide(release, release.queue_wait_ms)
        ctx.inputs = tuple(p.artifact.envelope for p in fired.parts)
        return await self.spec.handler(collector.view(fired), ctx)

    def _apply_state(self, state: KeyedState | None, partition: int, outcome: Outcome) -> None:
        """Keep a successful handler's state writes: in the commit, and in the partition's
        view that later records of the partition read."""
        if state is None or not state.writes:
            return
        base = self._state.get(partition)
        for key, value in state.writes.items():
            outcome.add_state(StateUpdate(partition, key, value))
        if base is None or not self._settles(outcome):
            # The partition moved or was rewound while the handler ran: its outcome will be
            # dropped, and the view (gone, or reloaded from the store) must not get its writes.
            return
        for key, value in state.writes.items():
            if value is None:
                base.pop(key, None)
            else:
                base[key] = value

    def _settles(self, outcome: Outcome) -> bool:
        """Whether ``outcome`` is still at its partitions' epochs (else a commit drops it)."""
        if outcome.item is not None:
            return self._epoch.get(outcome.item.tp) == outcome.item.epoch
        return all(self._epoch.get(tp) == e for tp, e in (outcome.epochs or {}).items())

    def _current(self, item: Item) -> bool:
        """Whether ``item``'s partition is still ours and not rewound, and no stop is asked."""
        return not self._stopping and self._epoch.get(item.tp) == item.epoch

    async def _permit(self, item: Item) -> bool:
        """Wait until the circuit breaker lets a handler call start; False if the record should
        be left unfinished instead (its partition moved, or a stop came while it waited: a
        record already dispatched still gets its call when the stop finds it running)."""
        breaker = self._breaker
        while breaker is not None and not breaker.allow():
            if not self._current(item):
                return False
            await self._pause_for(min(max(breaker.wait_s(), 0.05), 1.0), item)
        if self._epoch.get(item.tp) != item.epoch:
            if breaker is not None:
                breaker.released()
            return False
        return True

    async def _defer_retry(self, budget: RetryBudgets, item: Item) -> Deferral | None:
        """Hold a retry the budget refused until it allows it, without a handler slot
        meanwhile; the deferral (for the span), or None if the record is left unfinished."""
        assert item.artifact is not None
        self.stats.retries_deferred += 1
        self._free_slot()
        self._wake.set()  # the slot is free for another record
        try:
            deferral = await budget.defer(
                item.artifact.envelope, self._now, lambda s: self._pause_for(s, item)
            )
            if deferral is not None:
                await self._slot_back()
            return deferral
        finally:
            self._running += 1

    async def _slot_back(self) -> None:
        """Wait for a free handler slot (the agent's concurrency holds for resumed retries
        too); a slot that frees is kept for the waiting retries, not given to new records."""
        self._slot_waiters += 1
        try:
            while self._running >= self.spec.concurrency and not self._stopping:
                self._slot_freed.clear()
                await self._slot_freed.wait()
        finally:
            self._slot_waiters -= 1

    async def _rate_turn(self, item: Item) -> bool:
        """Wait until the rate limit lets one more call start (a retry is a call too) and
        spend it; False if the record is left unfinished instead (stop, partition gone)."""
        limiter = self._limiter
        assert limiter is not None
        while (wait := limiter.wait_s(self._now())) > 0:
            if not await self._pause_for(wait, item):
                return False
        limiter.started(self._now())
        return True

    async def _pause_for(self, seconds: float, item: Item) -> bool:
        """Sleep up to ``seconds``, waking early on stop; whether ``item`` is still current."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._stop_requested.wait()
        return self._current(item)

    def _outputs(self, ctx: Context, result: HandlerResult) -> list[OutgoingRecord]:
        """Publish what a handler returned (an output, a list, or None) after what it
        published itself, and encode them all."""
        if result is not None:
            if isinstance(result, BaseModel):
                ctx.publish(result)
            else:
                for out in result:
                    ctx.publish(out)
        return self._encode(ctx)

    def _encode(self, ctx: Context) -> list[OutgoingRecord]:
        limit, store_limit = self.settings.max_record_bytes, self.board.store.max_record_bytes
        record_for, outgoing = self.board.record_for, tracing.outgoing
        records = []
        for out in ctx.outputs:
            record = record_for(outgoing(self, out.envelope), out.payload)
            if record.value is not None and len(record.value) > limit:
                raise RecordTooLargeError(
                    f"output {out.envelope.type} {out.envelope.id} is {len(record.value)} bytes, "
                    f"over the limit of {limit}",
                    code="MSG_SIZE_TOO_LARGE",
                )
            # Headers bounded from the envelope first: an exact count only near the limit.
            bound = len(record.key or b"") + len(record.value or b"")
            size = None
            if bound + envelope_headers_bound(out.envelope) > store_limit:
                size = oversize(record, store_limit)
            if size is not None:
                raise RecordTooLargeError(
                    f"output {out.envelope.type} {out.envelope.id} is {size} bytes with its "
                    f"headers, over the store's limit of {store_limit}",
                    code="MSG_SIZE_TOO_LARGE",
                )
            records.append(record)
        return records

    def _finish(self, outcome: Outcome) -> None:
        if not self._completed:
            self._first_completed_at = self._now()
        self._completed.append(outcome)

    def _dead_letter(
        self,
        record: Record,
        stage: Stage,
        exc: BaseException,
        *,
        attempt: int = 1,
        first_failure_ts: float | None = None,
    ) -> OutgoingRecord:
        tracing.rejected(self, record, stage, exc)  # a span for records no handler saw
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

    # -- commit ---------------------------------------------------------------------------
    async def _commit(self) -> None:
        """Commit what finished; commits run one at a time, in the order they were asked for."""
        async with self._commit_lock:
            await self._commit_finished()

    async def _commit_finished(self) -> None:
        member = self._member
        if member is None or not self._completed:
            return
        done, self._completed = self._completed, []
        plan = plan_commit(done, self._epoch, self._progress)
        commit, touched, processed, dead = plan.commit, plan.touched, plan.processed, plan.dead
        if not commit:
            return
        try:
            await tracing.settle(self, member, commit, processed + dead)  # in a settle span
        except SupersededError as exc:
            self._superseded(exc, sorted(touched))
            return
        except (CommitError, RecordTooLargeError) as exc:
            # A record too large is checked before it reaches a commit (outputs in _encode,
            # dead letters cut to fit); should a store still refuse one, the worker redoes
            # the records instead of stopping every agent of the process.
            if self._stopping:  # leaving: the next owner redoes these from the committed offsets
                self._log.warning("commit failed while stopping; left to redo", error=str(exc))
                return
            self._log.warning("commit failed; redoing from the committed offsets", error=str(exc))
            await self._rewind(sorted(touched))
            return
        self.stats.commits += 1
        self._commit_backoff = FIRST_COMMIT_BACKOFF_S
        self.stats.processed += processed
        self.stats.dead_lettered += dead
        self.stats.outputs += len(commit.outputs)
        self._flow.resume_drained(self._progress)

    def _superseded(self, exc: SupersededError, partitions: Sequence[TopicPartition]) -> None:
        """Another process took over this worker slot: drop the work and stop."""
        self._log.error("a newer process took over this worker slot; stopping", error=str(exc))
        self._forget(partitions)
        self.stop()

    async def _rewind(self, partitions: Sequence[TopicPartition]) -> None:
        """Forget uncommitted work on ``partitions``; read them again from the committed offsets.

        The unit of a rewind is a partition *number*: keyed state (join parts, batches, agent
        state, settled replays) is one view per number, shared by every consumed topic's
        partition with that number, so every owned partition with a rewound number is rewound
        with it — otherwise a sibling's finished but uncommitted writes would vanish from the
        reloaded view while its commit still carries them (a join would lose a held part).
        The partitions leave ``_progress`` until the committed offsets and the state are read
        back, so nothing polled or finished meanwhile touches the old view or the new one.
        """
        member = self._member
        assert member is not None
        self.stats.rewinds += 1
        # Back off before reading (and running handlers) again: a store that refuses every
        # commit (Redis out of memory, Kafka unavailable) must not make handlers spin.
        self._poll_hold_until = self._now() + self._commit_backoff
        self._commit_backoff = min(self._commit_backoff * 2, MAX_COMMIT_BACKOFF_S)
        numbers = {tp.partition for tp in partitions}
        rewound = set(partitions) | {tp for tp in self._progress if tp.partition in numbers}
        owned = member.assignment()
        self._forget([tp for tp in rewound if tp not in owned])
        rewound = {tp for tp in rewound if tp in owned}
        for tp in rewound:  # stale from here on: running handlers' results are dropped
            self._progress.pop(tp, None)
            self._epoch[tp] = self._epoch.get(tp, 0) + 1
        epochs = {tp: self._epoch[tp] for tp in rewound}
        self._drop_queued(rewound)
        for number in {tp.partition for tp in rewound}:
            self._state.pop(number, None)
        committed = await member.committed(rewound)
        states = {n: await member.load_state(n) for n in sorted({tp.partition for tp in rewound})}
        # A rebalance may have run during the awaits (polls resume after the backoff): a
        # partition lost meanwhile is not ours to restore, and one assigned again meanwhile
        # was restored by on_assigned (its epoch moved on) and is left as it is.
        owned = member.assignment()
        restored = [
            tp
            for tp in sorted(rewound)
            if tp in owned and self._epoch.get(tp) == epochs[tp] and tp not in self._progress
        ]
        for tp in restored:
            done = committed.get(tp)
            start = done.offset if done else 0
            self._progress[tp] = PartitionProgress(start, done.metadata if done else "")
            self._flow.seek(tp, start)  # applied before the next poll starts
        for number in {tp.partition for tp in restored}:
            self._state.setdefault(number, states[number])  # on_assigned's view, if it loaded one

    # -- circuit breaker ------------------------------------------------------------------
    def _on_breaker(self, state: BreakerState, breaker: CircuitBreaker) -> None:
        """Log a breaker transition, wake the loop and publish the agent's status."""
        self._status.breaker_changed(state, breaker)
        self._wake.set()
        if state != "half_open":
            self._report_status()

    def _report_status(self) -> None:
        """Publish the breaker and backpressure state for ``blackboard lag`` and the dashboard."""
        self._status.report(self._breaker, self.throttle)


def _names(partitions: Sequence[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in partitions]


def _stats(stats: RunnerStats) -> dict[str, Any]:
    return dataclasses.asdict(stats)
