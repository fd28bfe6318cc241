"""``memory://`` — the embedded, in-process store and the default.

Full semantics in one process: partitioned logs, consumer groups whose members split the
partitions (range assignment per topic, so equal partition numbers of co-partitioned topics go
to the same member), committed offsets with metadata, per-group state, and atomic commits made
in one lock-protected step, so readers never see part of a commit.

A rebalance works as Kafka's does: when members come or go, a partition that must move is first
revoked from its owner inside the owner's next ``poll`` (the owner may still commit for it),
then assigned to its new owner at the committed offset. A member that leaves hands its
partitions over at once, without committing.

Log entries are tuples of plain values (bytes, strings, numbers, datetimes), which CPython's
garbage collector stops tracking, so a store holding millions of records does not slow every
full collection down; :class:`Record` objects are built only for what is read.

``memory:///path/to/file`` keeps the store in a file: loaded on open, written on close, and
locked against a second process meanwhile (for the CLI on the embedded store).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from blackboard.artifacts import Envelope
from blackboard.errors import FencedError, StoreClosedError, TopicError
from blackboard.records import (
    AtomicCommit,
    CommittedOffset,
    Headers,
    OutgoingRecord,
    Record,
    TopicPartition,
    partition_for,
)
from blackboard.store import (
    MAX_RECORD_BYTES,
    GroupMember,
    RebalanceListener,
    Store,
    check_record_sizes,
)
from blackboard.stores.assignment import range_assign
from blackboard.stores.snapshot import SnapshotFile

#: One log entry: key, value, explicit headers, append time, envelope fields (or None).
Entry: TypeAlias = tuple[bytes | None, bytes | None, Headers, float, tuple[Any, ...] | None]


def _entry(rec: OutgoingRecord, now: float) -> Entry:
    env = rec.envelope
    fields = None
    if env is not None:
        fields = (
            env.id,
            env.type,
            env.schema_version,
            env.correlation_id,
            env.causation_ids,
            env.partition_key,
            env.tenant,
            env.produced_by,
            env.created_at,
            env.traceparent,
        )
    return (rec.key, rec.value, rec.headers, now, fields)


def records_of(topic: str, partition: int, start: int, entries: list[Entry]) -> list[Record]:
    """Records for the log ``entries`` of ``topic[partition]``, the first at offset ``start``."""
    return [
        Record(
            topic,
            partition,
            offset,
            key,
            value,
            headers,
            ts,
            Envelope(*fields) if fields is not None else None,
        )
        for offset, (key, value, headers, ts, fields) in enumerate(entries, start)
    ]


@dataclass(slots=True)
class _Group:
    members: dict[str, MemoryMember] = field(default_factory=dict)
    owner: dict[TopicPartition, str] = field(default_factory=dict)
    target: dict[TopicPartition, str] = field(default_factory=dict)
    committed: dict[TopicPartition, CommittedOffset] = field(default_factory=dict)
    state: dict[int, dict[str, bytes]] = field(default_factory=dict)


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
        self.groups: dict[str, _Group] = {}
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
                    self.groups[name] = _Group(
                        committed=committed, state=loaded.state.get(name, {})
                    )

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
            grp = self.groups.setdefault(group, _Group())
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
            log.append(_entry(rec, now))
            positions.append((TopicPartition(rec.topic, p), offset))
            touched.add(rec.topic)
        for topic in touched:
            for member in self._subscribers.get(topic, ()):
                member.notify()
        return positions

    def _rebalance(self, group: _Group) -> None:
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

    def _hand_over(self, group: _Group, tp: TopicPartition) -> None:
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


class MemoryMember(GroupMember):
    """A member of a consumer group of the embedded store."""

    def __init__(
        self,
        store: MemoryStore,
        group: str,
        member_id: str,
        topics: tuple[str, ...],
        listener: RebalanceListener,
    ) -> None:
        super().__init__(group, member_id, max_record_bytes=store.max_record_bytes)
        self.topics = topics
        self._store = store
        self._listener = listener
        self._owned: list[TopicPartition] = []
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._to_assign: list[TopicPartition] = []
        self._to_revoke: list[TopicPartition] = []
        self._waiter: asyncio.Future[None] | None = None
        self._waiter_loop: asyncio.AbstractEventLoop | None = None
        self._rotation = 0
        self._interrupted = False

    # Called by the store with its lock held.
    def assign(self, tp: TopicPartition) -> None:
        self._to_assign.append(tp)
        self.notify()

    def revoke(self, tp: TopicPartition) -> None:
        if tp not in self._to_revoke:
            self._to_revoke.append(tp)
        self.notify()

    async def poll(self, max_records: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            await self._run_rebalance_callbacks()
            records = self._fetch(max_records)
            if records or self._closed or self._interrupted:
                self._interrupted = False
                return records
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return records
            loop = asyncio.get_running_loop()
            with self._store.lock:
                if self._has_work():
                    continue
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiter, self._waiter_loop = waiter, loop
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                with self._store.lock:
                    self._waiter = self._waiter_loop = None

    def _has_work(self) -> bool:
        if self._to_assign or self._to_revoke or self._closed or self._interrupted:
            return True
        store_topics = self._store.logs
        for tp in self._owned:
            if tp not in self._paused and self._positions[tp] < len(
                store_topics[tp.topic][tp.partition]
            ):
                return True
        return False

    async def _run_rebalance_callbacks(self) -> None:
        store = self._store
        if self._to_revoke:
            with store.lock:
                revoked, self._to_revoke = self._to_revoke, []
                group = store.groups[self.group]
                revoked = [
                    tp
                    for tp in revoked
                    if group.owner.get(tp) == self.member_id
                    and group.target.get(tp) != self.member_id
                ]
            if revoked:
                await self._listener.on_revoked(revoked)
                with store.lock:
                    self._owned = [tp for tp in self._owned if tp not in revoked]
                    for tp in revoked:
                        self._positions.pop(tp, None)
                        self._paused.discard(tp)
                    store.release(self, revoked)
        if self._to_assign:
            with store.lock:
                assigned, self._to_assign = self._to_assign, []
                group = store.groups[self.group]
                assigned = [tp for tp in assigned if group.owner.get(tp) == self.member_id]
                for tp in assigned:
                    done = group.committed.get(tp)
                    self._positions[tp] = done.offset if done is not None else 0
                    if tp not in self._owned:
                        self._owned.append(tp)
                self._owned.sort()
            if assigned:
                await self._listener.on_assigned(assigned)

    def _fetch(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        with self._store.lock:
            owned = self._owned
            if not owned or self._closed:
                return out
            topics = self._store.logs
            n = len(owned)
            start = self._rotation % n
            self._rotation += 1
            for i in range(n):
                tp = owned[(start + i) % n]
                if tp in self._paused:
                    continue
                log = topics[tp.topic][tp.partition]
                pos = self._positions[tp]
                if pos >= len(log):
                    continue
                chunk = log[pos : pos + (max_records - len(out))]
                self._positions[tp] = pos + len(chunk)
                out.extend(records_of(tp.topic, tp.partition, pos, chunk))
                if len(out) >= max_records:
                    break
        return out

    async def _commit(self, commit: AtomicCommit) -> None:
        with self._store.lock:
            self._store.check_open()
            self._store.apply_commit(self, commit)

    async def committed(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, CommittedOffset]:
        with self._store.lock:
            group = self._store.groups[self.group]
            return {tp: group.committed[tp] for tp in partitions if tp in group.committed}

    async def load_state(self, partition: int) -> dict[str, bytes]:
        with self._store.lock:
            return dict(self._store.groups[self.group].state.get(partition, {}))

    def assignment(self) -> frozenset[TopicPartition]:
        with self._store.lock:
            return frozenset(self._owned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        with self._store.lock:
            if tp in self._positions:
                self._positions[tp] = offset

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        with self._store.lock:
            self._paused.update(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        with self._store.lock:
            self._paused.difference_update(partitions)
            self.notify()

    def wakeup(self) -> None:
        self._interrupted = True
        self.notify()

    def notify(self) -> None:
        """Let a waiting poll look again (new records, a rebalance); thread-safe."""
        waiter, loop = self._waiter, self._waiter_loop
        if waiter is None or loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            if not waiter.done():
                waiter.set_result(None)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(_wake, waiter)

    async def close(self) -> None:
        with self._store.lock:
            if self._closed:
                return
            self._closed = True
            self._store.leave(self)
            self._owned = []
            self._positions.clear()
        self.notify()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
