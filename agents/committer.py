"""The commit part of a runner: what finished, committed in one atomic step, and the rewind
after a commit the store refused.

Outcomes wait in :attr:`Committer.completed` until the loop asks for a commit (``commit_every``
finished, ``commit_interval_ms`` passed, or the agent went idle); :meth:`Committer.commit`
turns them into one :class:`~blackboard.records.AtomicCommit` — outputs, dead letters, state
writes and offsets — and hands it to the store. Commits run one at a time, in order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from agents.work import Outcome, plan_commit
from blackboard.errors import CommitError, RecordTooLargeError, SupersededError
from blackboard.offsets import PartitionProgress
from blackboard.records import TopicPartition

if TYPE_CHECKING:
    from agents.flow import FlowControl
    from agents.hooks import Hooks
    from agents.partitions import Partitions
    from agents.work import RunnerStats
    from blackboard.store import GroupMember

#: Backoff before reading again after a failed commit, doubling while commits keep failing.
FIRST_COMMIT_BACKOFF_S = 0.05
MAX_COMMIT_BACKOFF_S = 5.0


class Committer:
    """Commits one runner's finished work.

    Args:
        partitions: progress, epochs and keyed state.
        drop_queued: drops what the ready queue holds of some partitions (a rewind's).
        flow: fetch pauses and seeks.
        hooks: the runner's hooks (``committed``).
        stats: the runner's counters.
        now: the event loop's clock.
        stopping: whether a stop was asked.
        forget: drops partitions the runner no longer owns.
        superseded: called when another process took over the worker slot.
        log: the runner's logger.
    """

    def __init__(
        self,
        partitions: Partitions,
        drop_queued: Callable[[set[TopicPartition]], None],
        flow: FlowControl,
        hooks: Hooks,
        stats: RunnerStats,
        now: Callable[[], float],
        stopping: Callable[[], bool],
        forget: Callable[[Sequence[TopicPartition]], None],
        superseded: Callable[[SupersededError, Sequence[TopicPartition]], None],
        log: Any,
    ) -> None:
        self.partitions = partitions
        self.drop_queued = drop_queued
        self.flow = flow
        self.hooks = hooks
        self.stats = stats
        self.now = now
        self.stopping = stopping
        self.forget = forget
        self.superseded = superseded
        self.log = log
        self.member: GroupMember | None = None
        self.completed: list[Outcome] = []
        self.first_completed_at = 0.0
        self.poll_hold_until = 0.0
        """A failed commit's backoff: no poll starts before this."""
        self._backoff = FIRST_COMMIT_BACKOFF_S
        self._lock = asyncio.Lock()

    def finish(self, outcome: Outcome) -> None:
        """Queue ``outcome`` for the next commit."""
        if not self.completed:
            self.first_completed_at = self.now()
        self.completed.append(outcome)

    async def commit(self) -> None:
        """Commit what finished; commits run one at a time, in the order they were asked for."""
        async with self._lock:
            await self._commit_finished()

    async def _commit_finished(self) -> None:
        member = self.member
        if member is None or not self.completed:
            return
        done, self.completed = self.completed, []
        partitions = self.partitions
        plan = plan_commit(done, partitions.epoch, partitions.progress)
        commit, touched, processed, dead = plan.commit, plan.touched, plan.processed, plan.dead
        if not commit:
            return
        start_ns = time.time_ns()
        try:
            await member.commit(commit)
        except SupersededError as exc:
            self._observe(commit, processed + dead, start_ns, exc)
            self.superseded(exc, sorted(touched))
            return
        except (CommitError, RecordTooLargeError) as exc:
            self._observe(commit, processed + dead, start_ns, exc)
            # A record too large is checked before it reaches a commit (outputs when encoded,
            # dead letters cut to fit); should a store still refuse one, the worker redoes
            # the records instead of stopping every agent of the process.
            if self.stopping():  # leaving: the next owner redoes these from the committed offsets
                self.log.warning("commit failed while stopping; left to redo", error=str(exc))
                return
            self.log.warning("commit failed; redoing from the committed offsets", error=str(exc))
            await self.rewind(sorted(touched))
            return
        except BaseException as exc:
            self._observe(commit, processed + dead, start_ns, exc)
            raise
        self._observe(commit, processed + dead, start_ns, None)
        stats = self.stats
        stats.commits += 1
        self._backoff = FIRST_COMMIT_BACKOFF_S
        stats.processed += processed
        stats.dead_lettered += dead
        stats.outputs += len(commit.outputs)
        self.flow.resume_drained(partitions.progress)

    def _observe(
        self, commit: Any, records: int, start_ns: int, error: BaseException | None
    ) -> None:
        for hook in self.hooks.committed:
            hook.committed(commit, records, start_ns, error)

    async def rewind(self, partitions: Sequence[TopicPartition]) -> None:
        """Forget uncommitted work on ``partitions``; read them again from the committed offsets.

        The unit of a rewind is a partition *number*: keyed state (join parts, batches, agent
        state, settled replays) is one view per number, shared by every consumed topic's
        partition with that number, so every owned partition with a rewound number is rewound
        with it — otherwise a sibling's finished but uncommitted writes would vanish from the
        reloaded view while its commit still carries them (a join would lose a held part).
        The partitions leave the progress map until the committed offsets and the state are
        read back, so nothing polled or finished meanwhile touches the old view or the new one.
        """
        member = self.member
        assert member is not None
        book = self.partitions
        self.stats.rewinds += 1
        # Back off before reading (and running handlers) again: a store that refuses every
        # commit (Redis out of memory, Kafka unavailable) must not make handlers spin.
        self.poll_hold_until = self.now() + self._backoff
        self._backoff = min(self._backoff * 2, MAX_COMMIT_BACKOFF_S)
        numbers = {tp.partition for tp in partitions}
        rewound = set(partitions) | {tp for tp in book.progress if tp.partition in numbers}
        owned = member.assignment()
        self.forget([tp for tp in rewound if tp not in owned])
        rewound = {tp for tp in rewound if tp in owned}
        for tp in rewound:  # stale from here on: running handlers' results are dropped
            book.progress.pop(tp, None)
            book.bump(tp)
        epochs = {tp: book.epoch[tp] for tp in rewound}
        self.drop_queued(rewound)
        for number in {tp.partition for tp in rewound}:
            book.state.pop(number, None)
        committed = await member.committed(rewound)
        states = {n: await member.load_state(n) for n in sorted({tp.partition for tp in rewound})}
        # A rebalance may have run during the awaits (polls resume after the backoff): a
        # partition lost meanwhile is not ours to restore, and one assigned again meanwhile
        # was restored by on_assigned (its epoch moved on) and is left as it is.
        owned = member.assignment()
        restored = [
            tp
            for tp in sorted(rewound)
            if tp in owned and book.epoch.get(tp) == epochs[tp] and tp not in book.progress
        ]
        for tp in restored:
            done = committed.get(tp)
            start = done.offset if done else 0
            book.progress[tp] = PartitionProgress(start, done.metadata if done else "")
            self.flow.seek(tp, start)  # applied before the next poll starts
        for number in {tp.partition for tp in restored}:
            book.state.setdefault(number, states[number])  # on_assigned's view, if it loaded one
