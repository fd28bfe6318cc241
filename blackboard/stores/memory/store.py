"""The embedded store: partitioned logs, consumer groups and atomic commits in one process
(see :mod:`blackboard.stores.memory`)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Sequence

from blackboard.errors import FencedError, StoreClosedError, TopicError
from blackboard.records import (
    AtomicCommit,
    CommittedOffset,
    OutgoingRecord,
    Record,
    TopicPartition,
    partition_for,
)
from blackboard.store import (
    MAX_RECORD_BYTES,
    RebalanceListener,
    Store,
    check_record_sizes,
)
from blackboard.stores.assignment import range_assign
from blackboard.stores.memory.log import Entry, Group, entry_of, records_of
from blackboard.stores.memory.member import MemoryMember
from blackboard.stores.snapshot import SnapshotFile


class MemoryStore(Store):
    """The embedded store. Thread-safe; members may live on different event loops."""

    system = "memory"
    embedded = True
    keeps_envelopes = True

    def __init__(self, url: str = "memory://", *, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        super().__init__(url)
        # Shared with this store's members (one module, one lock): they read and change these.
        self.lock = threading.RLock()
        """Guards everything below: one lock-protected step per operation."""
        self.logs: dict[str, list[list[Entry]]] = {}
        """Per topic, per partition, the entries."""
        self._compacted: set[str] = set()
        self.groups: dict[str, Group] = {}
        """Consumer groups: members, assignment, committed offsets and state."""
        self._subscribers: dict[str, set[MemoryMember]] = {}
        self._member_seq = itertools.count(1)
        self.max_record_bytes = max_record_bytes
        self._closed = False
        path = url.removeprefix("memory://")
        self._snapshot = SnapshotFile(path) if path else None
        if self._snapshot is not None:
            self._snapshot.lock()
            loaded = self._snapshot.load()
            if loaded is not None:
                self.logs = loaded.topics
                self._compacted = loaded.compacted
                for name, committed in loaded.committed.items():
                    self.groups[name] = Group(committed=committed, state=loaded.state.get(name, {}))

    # -- topics ---------------------------------------------------------------------------
    def create_topics(
        self, topics: Sequence[str], partitions: int, *, compacted: bool = False
    ) -> None:
        if partitions < 1:
            raise TopicError(f"a topic needs at least one partition, got {partitions}")
        with self.lock:
            self.check_open()
            created = [t for t in topics if t not in self.logs]
            for topic in created:
                self.logs[topic] = [[] for _ in range(partitions)]
                if compacted:
                    self._compacted.add(topic)
            if created:
                for group in self.groups.values():
                    if any(t in m.topics for m in group.members.values() for t in created):
                        self._rebalance(group)

    def topic_partitions(self, topic: str) -> int | None:
        with self.lock:
            parts = self.logs.get(topic)
            return len(parts) if parts is not None else None

    def list_topics(self) -> list[str]:
        with self.lock:
            return sorted(self.logs)

    # -- records --------------------------------------------------------------------------
    def publish(self, records: Sequence[OutgoingRecord]) -> list[tuple[TopicPartition, int]]:
        with self.lock:
            self.check_open()
            check_record_sizes(records, self.max_record_bytes)
            self._check_topics(records)
            positions = self._append(records, time.time())
        return positions

    def read(self, tp: TopicPartition, start: int, max_records: int) -> list[Record]:
        with self.lock:
            log = self._log(tp)
            first = max(0, start)
            return records_of(tp.topic, tp.partition, first, log[first : first + max_records])

    def end_offsets(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        with self.lock:
            return {
                TopicPartition(topic, p): len(log)
                for topic in topics
                if topic in self.logs
                for p, log in enumerate(self.logs[topic])
            }

    # -- groups ---------------------------------------------------------------------------
    def group_offsets(self, group: str) -> dict[TopicPartition, CommittedOffset]:
        with self.lock:
            found = self.groups.get(group)
            return dict(found.committed) if found is not None else {}

    def list_groups(self) -> list[str]:
        with self.lock:
            return sorted(n for n, g in self.groups.items() if g.members or g.committed)

    def group_topics(self, group: str) -> set[str]:
        with self.lock:
            found = self.groups.get(group)
            if found is None:
                return set()
            return {t for m in found.members.values() for t in m.topics}

    async def join(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        member_name: str = "",
    ) -> MemoryMember:
        with self.lock:
            self.check_open()
            member_id = f"{group}.{member_name or 'member'}-{next(self._member_seq)}"
            member = MemoryMember(self, group, member_id, tuple(topics), listener)
            grp = self.groups.setdefault(group, Group())
            grp.members[member_id] = member
            for topic in topics:
                self._subscribers.setdefault(topic, set()).add(member)
            self._rebalance(grp)
        return member

    def close(self) -> None:
        with self.lock:
            if self._closed:
                return
            self._closed = True
            members = [m for g in self.groups.values() for m in g.members.values()]
        for member in members:
            member.notify()
        if self._snapshot is not None:
            with self.lock:
                self._snapshot.save(
                    self.logs,
                    self._compacted,
                    {n: g.committed for n, g in self.groups.items()},
                    {n: g.state for n, g in self.groups.items()},
                )
            self._snapshot.unlock()

    # -- internals (called with the lock held) ---------------------------------------------
    def check_open(self) -> None:
        """Raise :class:`StoreClosedError` once the store is closed (hold :attr:`lock`)."""
        if self._closed:
            raise StoreClosedError(f"store {self.url} is closed")

    def _log(self, tp: TopicPartition) -> list[Entry]:
        parts = self.logs.get(tp.topic)
        if parts is None:
            raise TopicError(f"topic {tp.topic} does not exist")
        if not 0 <= tp.partition < len(parts):
            raise TopicError(f"topic {tp.topic} has no partition {tp.partition}")
        return parts[tp.partition]

    def _check_topics(self, records: Iterable[OutgoingRecord]) -> None:
        for rec in records:
            parts = self.logs.get(rec.topic)
            if parts is None:
                raise TopicError(f"topic {rec.topic} does not exist")
            if rec.partition is not None and not 0 <= rec.partition < len(parts):
                raise TopicError(f"topic {rec.topic} has no partition {rec.partition}")

    def _append(
        self, records: Iterable[OutgoingRecord], now: float
    ) -> list[tuple[TopicPartition, int]]:
        positions: list[tuple[TopicPartition, int]] = []
        touched: set[str] = set()
        topics = self.logs
        for rec in records:
            parts = topics[rec.topic]
            p = rec.partition if rec.partition is not None else partition_for(rec.key, len(parts))
            log = parts[p]
            offset = len(log)
            log.append(entry_of(rec, now))
            positions.append((TopicPartition(rec.topic, p), offset))
            touched.add(rec.topic)
        for topic in touched:
            for member in self._subscribers.get(topic, ()):
                member.notify()
        return positions

    def _rebalance(self, group: Group) -> None:
        """Range-assign every subscribed partition; start moving those whose owner changes."""
        subscriptions = {mid: m.topics for mid, m in group.members.items()}
        counts = {topic: len(parts) for topic, parts in self.logs.items()}
        target = group.target = range_assign(subscriptions, counts)
        for tp, new_owner in target.items():
            current = group.owner.get(tp)
            if current is None:
                self._hand_over(group, tp)
            elif current != new_owner:
                group.members[current].revoke(tp)

    def _hand_over(self, group: Group, tp: TopicPartition) -> None:
        """Give an unowned partition to its target member."""
        new_owner = group.target.get(tp)
        if new_owner is None:
            return
        group.owner[tp] = new_owner
        group.members[new_owner].assign(tp)

    def release(self, member: MemoryMember, partitions: Iterable[TopicPartition]) -> None:
        """``member`` gives up ``partitions`` (hold :attr:`lock`)."""
        group = self.groups[member.group]
        for tp in partitions:
            if group.owner.get(tp) == member.member_id:
                del group.owner[tp]
                self._hand_over(group, tp)

    def leave(self, member: MemoryMember) -> None:
        """``member`` leaves its group (hold :attr:`lock`)."""
        group = self.groups.get(member.group)
        if group is None or group.members.get(member.member_id) is not member:
            return
        del group.members[member.member_id]
        for topic in member.topics:
            self._subscribers.get(topic, set()).discard(member)
        owned = [tp for tp, owner in group.owner.items() if owner == member.member_id]
        for tp in owned:
            del group.owner[tp]
        self._rebalance(group)

    def apply_commit(self, member: MemoryMember, commit: AtomicCommit) -> None:
        """Check ownership and topics, then apply ``commit`` (sizes were checked already)."""
        group = self.groups[member.group]
        mine = member.member_id
        for tp in commit.offsets:
            if group.owner.get(tp) != mine:
                raise FencedError(
                    f"{mine} does not own {tp.topic}[{tp.partition}] in group {member.group}",
                    code="FENCED",
                )
        owned_partitions = {tp.partition for tp, owner in group.owner.items() if owner == mine}
        for update in commit.state:
            if update.partition not in owned_partitions:
                raise FencedError(
                    f"{mine} does not own state partition {update.partition} of {member.group}",
                    code="FENCED",
                )
        self._check_topics(itertools.chain(commit.outputs, commit.dead_letters))
        # Every check passed: apply it all in this one locked step.
        self._append(itertools.chain(commit.outputs, commit.dead_letters), time.time())
        group.committed.update(commit.offsets)
        for update in commit.state:
            entries = group.state.setdefault(update.partition, {})
            if update.value is None:
                entries.pop(update.key, None)
            else:
                entries[update.key] = update.value
