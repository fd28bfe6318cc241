"""What a runner carries for each record it read (:class:`Item`), what finishing one — or a
join timeout or batch window — leaves to commit (:class:`Outcome`), the runner's counters, and
one atomic commit built from what finished (:func:`plan_commit`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from blackboard.artifacts import Artifact
from blackboard.dlq import ReplayInfo
from blackboard.offsets import PartitionProgress
from blackboard.records import AtomicCommit, OutgoingRecord, Record, StateUpdate, TopicPartition
from scheduler.base import Admission, Decision

if TYPE_CHECKING:
    from pydantic import BaseModel

OrderKey = bytes | str | None


@dataclass(slots=True)
class Item:
    """One record a runner read, from admission until it finished."""

    record: Record
    tp: TopicPartition
    epoch: int
    """The partition's epoch when it was read: results of an older epoch are dropped."""
    artifact: Artifact[BaseModel] | None = None
    replay: ReplayInfo | None = None
    key: OrderKey = None
    """What ordered agents serialise on: the record key, or a join or batch key."""
    polled_at: float | None = None  # time.monotonic() when its poll returned (queue wait)
    info: Admission | None = None  # what the scheduling policy knows of it
    decision: Decision | None = None  # why it ran when it did (set when it leaves the queue)


@dataclass(slots=True)
class Outcome:
    """What finishing a record (or firing a timer) leaves for the next commit."""

    item: Item | None
    """The record that finished; None for a timer (a join timeout or a batch window)."""
    outputs: Sequence[OutgoingRecord] = ()
    dead_letter: OutgoingRecord | None = None
    state: list[StateUpdate] | None = None
    dead_letters: Sequence[OutgoingRecord] = ()
    epochs: dict[TopicPartition, int] | None = None
    """A timer's partitions and their epochs when it fired (dropped if one changed)."""

    def add_state(self, update: StateUpdate) -> None:
        """Commit ``update`` with this outcome (no list is made for the many without one)."""
        if self.state is None:
            self.state = [update]
        else:
            self.state.append(update)


@dataclass(slots=True)
class RunnerStats:
    """Counters of one runner."""

    processed: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    outputs: int = 0
    commits: int = 0
    rewinds: int = 0
    retries: int = 0
    deferred: int = 0
    """Records the scheduling policy started after later ones (see scheduler.Decision)."""
    retries_deferred: int = 0
    """Retries the agent's retry budget held back (see scheduler.RetryBudget)."""


@dataclass(slots=True)
class CommitPlan:
    """One atomic commit and what it settles."""

    commit: AtomicCommit = field(default_factory=AtomicCommit)
    touched: set[TopicPartition] = field(default_factory=set)
    """The partitions whose offsets it commits."""
    processed: int = 0
    dead: int = 0


def plan_commit(
    done: Sequence[Outcome],
    epochs: Mapping[TopicPartition, int],
    progress: Mapping[TopicPartition, PartitionProgress],
) -> CommitPlan:
    """The commit of ``done``: outputs, dead letters and state writes of the outcomes whose
    partitions are still at their epoch (the others were lost or rewound while they ran), and
    per touched partition the offset and finished-offsets metadata (``progress`` notes them)."""
    plan = CommitPlan()
    commit, touched = plan.commit, plan.touched
    for oc in done:
        if oc.item is None:  # a timer: no record, but its partitions' offsets fence it
            fired = oc.epochs or {}
            if any(epochs.get(tp) != e for tp, e in fired.items()):
                continue
            touched.update(fired)
            commit.outputs.extend(oc.outputs)
            commit.dead_letters.extend(oc.dead_letters)
            if oc.state:
                commit.state.extend(oc.state)
            plan.dead += len(oc.dead_letters)
            continue
        tp = oc.item.tp
        if epochs.get(tp) != oc.item.epoch:
            continue  # the partition was lost or rewound while this ran
        progress[tp].finish(oc.item.record.offset)
        touched.add(tp)
        if oc.dead_letter is not None:
            commit.dead_letters.append(oc.dead_letter)
            if oc.state:  # a replay dead-lettered again: its settled marker (no handler writes)
                commit.state.extend(oc.state)
            plan.dead += 1
        else:
            commit.outputs.extend(oc.outputs)
            if oc.state:
                commit.state.extend(oc.state)
            plan.processed += 1
    for tp in touched:
        commit.offsets[tp] = progress[tp].position()
    return plan
