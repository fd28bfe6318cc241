"""The partitions a runner owns: where each stands, its epoch, and the keyed state per number.

Every partition has an *epoch* that changes when the runner loses or rewinds it, so results of
handlers that were running at that moment are dropped instead of committed twice. Keyed state
(join parts, batches, agent state, settled replays) is one view per partition *number*,
shared by every consumed topic's partition with that number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from agents.work import Outcome
from blackboard.offsets import PartitionProgress
from blackboard.records import CommittedOffset, StateUpdate, TopicPartition

if TYPE_CHECKING:
    from agents.context import KeyedState


class Partitions:
    """Progress, epochs and keyed state of one runner's partitions."""

    __slots__ = ("epoch", "progress", "state")

    def __init__(self) -> None:
        self.progress: dict[TopicPartition, PartitionProgress] = {}
        self.epoch: dict[TopicPartition, int] = {}
        self.state: dict[int, dict[str, bytes]] = {}

    def track(self, tp: TopicPartition, done: CommittedOffset | None) -> None:
        """Start tracking ``tp`` from its committed offset and metadata (a new epoch)."""
        self.progress[tp] = (
            PartitionProgress(done.offset, done.metadata) if done else PartitionProgress(0)
        )
        self.bump(tp)

    def bump(self, tp: TopicPartition) -> None:
        """Start a new epoch of ``tp``: results of the older one are dropped."""
        self.epoch[tp] = self.epoch.get(tp, 0) + 1

    def forget(self, gone: Iterable[TopicPartition]) -> None:
        """Stop tracking ``gone`` (a new epoch each), and drop the state of numbers no tracked
        partition has any more."""
        for tp in gone:
            self.progress.pop(tp, None)
            self.bump(tp)
        still = {tp.partition for tp in self.progress}
        for number in [n for n in self.state if n not in still]:
            del self.state[number]

    def at(self, epochs: Mapping[TopicPartition, int]) -> bool:
        """Whether every partition of ``epochs`` is still at that epoch."""
        epoch = self.epoch
        return all(epoch.get(tp) == e for tp, e in epochs.items())

    def epochs_of(self, number: int) -> dict[TopicPartition, int]:
        """The tracked partitions with partition number ``number`` and their epochs."""
        return {tp: self.epoch[tp] for tp in self.progress if tp.partition == number}

    def settles(self, outcome: Outcome) -> bool:
        """Whether ``outcome`` is still at its partitions' epochs (else a commit drops it)."""
        if outcome.item is not None:
            return self.epoch.get(outcome.item.tp) == outcome.item.epoch
        return self.at(outcome.epochs or {})

    def keep_writes(self, state: KeyedState | None, partition: int, outcome: Outcome) -> None:
        """Keep a successful call's state writes: in ``outcome``'s commit, and in the
        partition's view that later records of the partition read (unless the outcome is
        stale: the view is then gone, or reloaded from the store, and must not get them)."""
        if state is None or not state.writes:
            return
        for key, value in state.writes.items():
            outcome.add_state(StateUpdate(partition, key, value))
        base = self.state.get(partition)
        if base is None or not self.settles(outcome):
            return
        for key, value in state.writes.items():
            if value is None:
                base.pop(key, None)
            else:
                base[key] = value
