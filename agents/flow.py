"""Which partitions a runner reads, and how much (docs/DESIGN.md §4, step 3): a bounded buffer of
records read but not committed, partitions paused while the buffer stays full, while one runs
too far ahead of its lowest unfinished offset, or while the circuit is open, and seeks back to
committed offsets after a failed commit.

The member is told about pauses and seeks only between polls (:meth:`FlowControl.apply`),
never while a poll runs on another thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from blackboard.offsets import PartitionProgress
from blackboard.records import Record, TopicPartition
from blackboard.store import GroupMember

Progress = Mapping[TopicPartition, PartitionProgress]


class FlowControl:
    """The pauses and seeks of one runner.

    Args:
        max_buffered: records read and not committed before reading stops.
        max_offset_window: how far a partition may run ahead of its lowest unfinished offset.
        full_for_s: how long the buffer stays full before its partitions are paused (until
            then a full buffer only stops the polls: a Kafka consumer drops what it prefetched
            on pause and needs a fetch cycle to restart).
    """

    def __init__(self, max_buffered: int, max_offset_window: int, full_for_s: float) -> None:
        self.max_buffered = max_buffered
        self.max_offset_window = max_offset_window
        self.full_for_s = full_for_s
        self.paused: set[TopicPartition] = set()
        """Partitions the runner wants paused."""
        self._member_paused: set[TopicPartition] = set()
        self._seeks: dict[TopicPartition, int] = {}
        self._full_since: float | None = None

    @staticmethod
    def buffered(progress: Progress) -> int:
        """Records read and not yet committed as finished (queued, parked, running, done)."""
        return sum(p.in_flight for p in progress.values())

    def room(self, progress: Progress) -> int:
        """How many more records may be read now."""
        return max(0, self.max_buffered - self.buffered(progress))

    def all_paused(self, progress: Progress) -> bool:
        """Every owned partition is paused (a poll then only serves the group's callbacks)."""
        return self.paused.issuperset(progress)

    def update(self, progress: Progress, circuit_closed: bool, now: float) -> None:
        """Pause every partition while the circuit is open or once the buffer has been full
        for ``full_for_s``; resume once it drained to half."""
        if not circuit_closed:
            self.paused |= set(progress)  # cool-down: fetch nothing more
            return
        if self.buffered(progress) >= self.max_buffered:
            if self._full_since is None:
                self._full_since = now
            elif now - self._full_since >= self.full_for_s:
                self.paused |= set(progress)
            return
        self._full_since = None
        self.resume_drained(progress)

    def resume_drained(self, progress: Progress) -> None:
        """Unpause partitions once the buffer is at most half full and their offset window has
        room again."""
        if not self.paused or self.buffered(progress) >= self.max_buffered // 2:
            return
        window = self.max_offset_window
        self.paused = {tp for tp in self.paused if tp in progress and progress[tp].span() >= window}

    def check_windows(self, touched: Iterable[TopicPartition], progress: Progress) -> None:
        """Pause the ``touched`` partitions that ran ``max_offset_window`` ahead of their lowest
        unfinished offset (which bounds the finished offsets a commit's metadata names)."""
        window = self.max_offset_window
        for tp in touched:
            if tp not in self.paused and progress[tp].span() >= window:
                self.paused.add(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` again from ``offset`` (told to the member before the next poll)."""
        self._seeks[tp] = offset

    def fresh(self, records: list[Record]) -> list[Record]:
        """Drop records of partitions rewound while their poll ran (a seek is pending)."""
        seeks = self._seeks
        if not seeks:
            return records
        return [r for r in records if TopicPartition(r.topic, r.partition) not in seeks]

    def seeking(self, tp: TopicPartition) -> bool:
        """Whether a seek of ``tp`` is pending (what the last poll said of it is stale)."""
        return tp in self._seeks

    def forget(self, tp: TopicPartition) -> None:
        """``tp`` is no longer ours: no pause or seek of it is kept."""
        self.paused.discard(tp)
        self._member_paused.discard(tp)
        self._seeks.pop(tp, None)

    def apply(self, member: GroupMember) -> None:
        """Tell the member the pending seeks and the pauses and resumes since the last call."""
        if self._seeks:
            for tp, offset in self._seeks.items():
                member.seek(tp, offset)
            self._seeks.clear()
        pause = self.paused - self._member_paused
        if pause:
            member.pause(pause)
        resume = self._member_paused - self.paused
        if resume:
            member.resume(resume)
        self._member_paused = set(self.paused)
