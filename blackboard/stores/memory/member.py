"""A member of a consumer group of the embedded store (see :mod:`blackboard.stores.memory`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from blackboard.records import (
    AtomicCommit,
    CommittedOffset,
    Record,
    TopicPartition,
)
from blackboard.store import (
    GroupMember,
    RebalanceListener,
)
from blackboard.stores.memory.log import records_of

if TYPE_CHECKING:
    from blackboard.stores.memory.store import MemoryStore


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
