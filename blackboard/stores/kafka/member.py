"""A consumer-group member on Kafka: a ``read_committed`` consumer, its polls, rebalance
callbacks and positions (docs/DESIGN.md §3, §4). Commits go through the worker slot's
transactions (:mod:`blackboard.stores.kafka.transactions`).

Threads: ``consume()`` blocks, so it runs on the member's poll thread; librdkafka calls the
rebalance callbacks inside it, and they hand the work to the event loop (the runner's listener)
and wait for it. Transactions run on a second thread, so a listener may commit while the poll
thread waits in a revoke callback (commit-on-revoke).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KafkaTP

from blackboard.errors import StoreError, SupersededError
from blackboard.logs import get_logger
from blackboard.records import AtomicCommit, CommittedOffset, Record, TopicPartition
from blackboard.store import GroupMember, RebalanceListener, check_commit_limits
from blackboard.stores.kafka.errors import translate
from blackboard.stores.kafka.transactions import SlotTransactions

if TYPE_CHECKING:
    from blackboard.stores.kafka.store import KafkaStore

T = TypeVar("T")
log = get_logger("kafka")

POLL_SLICE_S = 0.05


class KafkaMember(GroupMember):
    """One member of a consumer group, with the slot's transactional producer."""

    def __init__(
        self,
        store: KafkaStore,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        slot: str,
    ) -> None:
        super().__init__(group, f"{group}.{slot}", max_record_bytes=store.max_record_bytes)
        self.transactional_id = store.settings.transactional_id(group, slot)
        self._store = store
        self._topics = list(topics)
        self._listener = listener
        self._state_topic = f"{group}.state"
        self._group_metadata: Any = None
        self._owned: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._interrupted = threading.Event()
        self._poll_thread = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-poll-{group}")
        self._txn_thread = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-txn-{group}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer = Consumer(store.settings.consumer_config(group))
        # The producer's init_transactions fences whatever a predecessor on the slot left open.
        self._transactions = SlotTransactions(
            store,
            group,
            self.transactional_id,
            topics=self._topics,
            state_topic=self._state_topic,
            group_metadata=lambda: self._group_metadata,
        )

    async def start(self) -> None:
        """Subscribe; partitions arrive through the listener inside :meth:`poll`."""
        self._loop = asyncio.get_running_loop()
        await self._on_txn_thread(lambda: None)
        self._consumer.subscribe(
            self._topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    # -- rebalance callbacks (poll thread) ------------------------------------------------
    def _call_listener(
        self, method: Callable[[Sequence[TopicPartition]], Any], parts: list[Any]
    ) -> None:
        tps = [TopicPartition(p.topic, p.partition) for p in parts]
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(method(tps), self._loop).result()

    def _on_assign(self, consumer: Consumer, parts: list[Any]) -> None:
        # The group generation changes only here; take its metadata on this thread (from any
        # other it would wait for the very rebalance we are in).
        self._group_metadata = consumer.consumer_group_metadata()
        # A new assignment starts unpaused, as the listener expects (it forgot the pauses of
        # partitions it lost). librdkafka keeps a partition's pause flag across a rebalance: a
        # partition paused for backpressure, lost (a broker restart outlasting the session)
        # and assigned back would never be fetched again.
        consumer.resume(parts)
        self._owned |= {TopicPartition(p.topic, p.partition) for p in parts}
        self._call_listener(self._listener.on_assigned, parts)

    def _on_revoke(self, consumer: Consumer, parts: list[Any]) -> None:
        if self._closed:  # leaving after the runner committed: nothing left to do
            self._owned.clear()
            return
        try:
            self._call_listener(self._listener.on_revoked, parts)
        finally:
            self._owned -= {TopicPartition(p.topic, p.partition) for p in parts}

    def _on_lost(self, consumer: Consumer, parts: list[Any]) -> None:
        self._owned -= {TopicPartition(p.topic, p.partition) for p in parts}
        if self._closed:
            return
        self._call_listener(self._listener.on_lost, parts)

    # -- polling --------------------------------------------------------------------------
    async def poll(self, max_records: int, timeout: float) -> list[Record]:
        if self._closed:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._poll_thread, self._poll_sync, max_records, timeout)

    def _poll_sync(self, max_records: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        want = max(1, max_records)
        while True:
            slice_s = max(0.0, min(POLL_SLICE_S, deadline - time.monotonic()))
            try:
                # Take what is fetched already; block (for one record) only when nothing is:
                # consume(n, t) would wait to fill all n or for the whole slice.
                messages = self._consumer.consume(want, 0)
                if not messages and slice_s > 0:
                    messages = self._consumer.consume(1, slice_s)
                    if messages and want > 1:
                        messages += self._consumer.consume(want - 1, 0)
            except KafkaException as exc:
                raise translate(exc, "consume") from exc
            records = [record_of(m) for m in messages if m.error() is None]
            for m in messages:
                if m.error() is not None:
                    log.warning("consumer error", group=self.group, error=str(m.error()))
            if (
                records
                or self._interrupted.is_set()
                or self._closed
                or time.monotonic() >= deadline
            ):
                self._interrupted.clear()
                self._positions = self._read_positions()
                return records

    def _read_positions(self) -> dict[TopicPartition, int]:
        """The consumer's positions (poll thread): the offset after the last message it
        returned, or after the transaction markers and aborted records it skipped past."""
        if not self._owned:
            return {}
        try:
            found = self._consumer.position([KafkaTP(tp.topic, tp.partition) for tp in self._owned])
        except KafkaException as exc:
            log.warning("position failed", group=self.group, error=str(exc))
            return {}
        return {TopicPartition(p.topic, p.partition): p.offset for p in found if p.offset >= 0}

    def read_positions(self) -> dict[TopicPartition, int]:
        return self._positions

    # -- commits (transaction thread) -----------------------------------------------------
    def _superseded_error(self) -> SupersededError | None:
        return self._transactions.superseded_error()

    #: The size and metadata checks run with the transaction, on its thread (a thousand
    #: records' sizes on the event loop held up polls and handlers).
    checks_in_commit = True

    async def _commit(self, commit: AtomicCommit) -> None:
        limit = self.max_record_bytes

        def run() -> None:
            check_commit_limits(commit, limit)
            self._transactions.commit(commit)

        await self._on_txn_thread(run)

    async def _on_txn_thread(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._txn_thread, fn)

    # -- positions and state --------------------------------------------------------------
    async def committed(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, CommittedOffset]:
        # Through the admin client: the consumer's own committed() waits for the rebalance
        # that calls us. Stable (KIP-447) and by partition: a pending transactional commit is
        # waited for, never read as "no commit" (KafkaStore.group_offsets).
        wanted = sorted(set(partitions))
        if not wanted:
            return {}
        return await self._on_txn_thread(
            lambda: self._retrying(
                "committed offsets",
                lambda: self._store.group_offsets(self.group, stable=True, partitions=wanted),
            )
        )

    async def load_state(self, partition: int) -> dict[str, bytes]:
        return await self._on_txn_thread(
            lambda: self._retrying(
                "state restore", lambda: self._store.read_state(self._state_topic, partition)
            )
        )

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn``, retrying while the cluster is unavailable (a broker restarting), with
        capped exponential backoff, until it answers or the member closes."""
        delay = 0.2
        while True:
            try:
                return fn()
            except StoreError as exc:
                if not exc.retriable or self._closed:
                    raise
                log.warning(
                    "kafka unavailable, retrying", group=self.group, action=what, error=str(exc)
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self._owned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(KafkaTP(tp.topic, tp.partition, offset))
        except KafkaException as exc:
            log.warning("seek failed", partition=f"{tp.topic}[{tp.partition}]", error=str(exc))

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        parts = [KafkaTP(tp.topic, tp.partition) for tp in partitions if tp in self._owned]
        if parts:
            self._consumer.pause(parts)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        parts = [KafkaTP(tp.topic, tp.partition) for tp in partitions if tp in self._owned]
        if parts:
            self._consumer.resume(parts)

    def wakeup(self) -> None:
        self._interrupted.set()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._interrupted.set()
        loop = asyncio.get_running_loop()
        # Leaving the group runs the revoke callback on the poll thread; the runner has
        # already committed, so it has nothing left to do there.
        await loop.run_in_executor(self._poll_thread, self._close_consumer)
        await self._on_txn_thread(self._transactions.close)
        self._poll_thread.shutdown(wait=False)
        self._txn_thread.shutdown(wait=False)

    def _close_consumer(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close failed", group=self.group, error=str(exc))


def record_of(m: Any) -> Record:
    """The :class:`Record` of a consumed confluent-kafka message."""
    _, ts = m.timestamp()
    return Record(
        m.topic(),
        m.partition(),
        m.offset(),
        m.key(),
        m.value(),
        tuple(m.headers() or ()),
        ts / 1000.0,
    )
