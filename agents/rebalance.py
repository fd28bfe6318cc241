"""The runner's rebalance listener: partitions assigned, revoked or lost (the store calls it
inside a poll)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from blackboard.records import TopicPartition

if TYPE_CHECKING:
    from agents.committer import Committer
    from agents.flow import FlowControl
    from agents.intake import Intake
    from agents.partitions import Partitions
    from blackboard.store import GroupMember


class Rebalance:
    """Starts and stops tracking one runner's partitions as the group moves them.

    Args:
        partitions: progress, epochs and keyed state.
        flow: fetch pauses and seeks.
        intake: the ready queue (what it holds of a partition that left is dropped).
        committer: commits what finished before a partition is given up.
        log: the runner's logger.
    """

    def __init__(
        self,
        partitions: Partitions,
        flow: FlowControl,
        intake: Intake,
        committer: Committer,
        log: Any,
    ) -> None:
        self.partitions = partitions
        self.flow = flow
        self.intake = intake
        self.committer = committer
        self.log = log
        self.member: GroupMember | None = None

    async def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """Start tracking newly owned partitions from their committed offsets and metadata."""
        member = self.member
        assert member is not None
        book = self.partitions
        committed = await member.committed(partitions)
        for tp in partitions:
            book.track(tp, committed.get(tp))
            if tp.partition not in book.state:  # keyed state, and the replays settled
                book.state[tp.partition] = await member.load_state(tp.partition)
        self.log.info("partitions assigned", partitions=names(partitions))

    async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """Commit what finished, then let the partitions go."""
        await self.committer.commit()
        self.forget(partitions)
        self.log.info("partitions revoked", partitions=names(partitions))

    async def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        """Drop the partitions' uncommitted work: another member owns them already."""
        self.forget(partitions)
        self.log.warning("partitions lost", partitions=names(partitions))

    def forget(self, partitions: Sequence[TopicPartition]) -> None:
        """Stop tracking ``partitions`` and drop what is queued of them."""
        gone = set(partitions)
        self.partitions.forget(gone)
        for tp in gone:
            self.flow.forget(tp)
        self.intake.drop_queued(gone)


def names(partitions: Sequence[TopicPartition]) -> list[str]:
    """``topic[partition]`` of each, for log lines."""
    return [f"{tp.topic}[{tp.partition}]" for tp in partitions]
