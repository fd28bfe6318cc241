"""A consumer-group member on Kafka: a ``read_committed`` consumer and the worker slot's
transactional producer (docs/DESIGN.md §3, §4).

Threads: ``consume()`` blocks, so it runs on the member's poll thread; librdkafka calls the
rebalance callbacks inside it, and they hand the work to the event loop (the runner's listener)
and wait for it. Transactions run on a second thread, so a listener may commit while the poll
thread waits in a revoke callback (commit-on-revoke).

One atomic commit is one transaction: produce outputs, dead letters and state changelog records,
``send_offsets_to_transaction`` with the consumer's group metadata (KIP-447: a zombie from an
older group generation is fenced), then ``commit_transaction``. librdkafka's rules: a retriable
``send_offsets_to_transaction`` or commit is retried (a commit is never aborted after a timeout);
an abortable error aborts and the runner redoes from the committed offsets; a fatal error
(another process took over the slot) ends the member.

Watchdog: librdkafka does not always honour the timeout of a transactional call (#5456: a
``send_offsets_to_transaction`` waiting for an unreachable group coordinator waits for good). So
the producer's blocking calls run on a thread of their own, and a call still running well past
its timeout counts as *wedged*: the member abandons that producer and its thread (never touching
them again) and starts a new producer with the same transactional id. Its ``init_transactions``
fences the old one and settles the old transaction on the coordinator — aborted, or committed if
its commit had begun — and the commit fails with a retriable :class:`CommitError`, so the runner
reads the committed offsets back, which say which of the two happened. Nothing is committed twice
and nothing is aborted after a commit was sent.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, TypeVar

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTP

from blackboard.errors import (
    CommitError,
    StoreError,
    StoreUnavailableError,
    SupersededError,
)
from blackboard.logs import get_logger
from blackboard.records import (
    AtomicCommit,
    CommittedOffset,
    OutgoingRecord,
    Record,
    TopicPartition,
)
from blackboard.store import GroupMember, RebalanceListener
from blackboard.stores.kafka.errors import kafka_error, superseded_by, translate

if TYPE_CHECKING:
    from blackboard.stores.kafka.store import KafkaStore

T = TypeVar("T")
log = get_logger("kafka")

POLL_SLICE_S = 0.05
TXN_TIMEOUT_S = 30.0
COMMIT_RETRIES = 20
ABORT_RETRIES = 3
#: How long past its own timeout a transactional call may run before its producer counts as
#: wedged. Timeout plus grace stays below the transaction timeout (60 s), so the new producer
#: settles a wedged transaction before the coordinator aborts it on its own.
WEDGE_GRACE_S = 15.0


class _Wedged(Exception):
    """A librdkafka call did not return long after its own timeout."""


class _CallThread:
    """A daemon thread running one producer's blocking calls one at a time, so the member can
    stop waiting for a call that never returns. A wedged thread is abandoned with its producer;
    being a daemon, it does not keep the process from exiting."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def call(self, fn: Callable[[], T], timeout: float, what: str) -> T:
        """``fn()`` on the thread, its result or exception.

        Raises:
            _Wedged: ``fn`` had not returned after ``timeout`` seconds.
        """
        future: Future[T] = Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting caller
                future.set_exception(exc)

        self._jobs.put(job)
        done, _ = wait([future], timeout)
        if not done:
            raise _Wedged(f"{what} did not return within {timeout:.0f}s")
        return future.result()

    def stop(self) -> None:
        """End the thread after the calls already queued."""
        self._jobs.put(None)


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
        self._state_ready = False
        self._group_metadata: Any = None
        self._owned: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._interrupted = threading.Event()
        self._poll_thread = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-poll-{group}")
        self._txn_thread = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-txn-{group}")
        self._loop: asyncio.AbstractEventLoop | None = None
        settings = store.settings
        self._consumer = Consumer(settings.consumer_config(group))
        # The producer and the thread its blocking calls run on; both None between a failure
        # and the next commit, which starts a new pair. Only the transaction thread changes them.
        self._producer: Producer | None = None
        self._calls: _CallThread | None = None
        self._superseded = False
        # Producers with a call stuck inside: kept referenced so they are never destroyed
        # under that call, and never used again.
        self._wedged: list[tuple[Producer, _CallThread]] = []
        self._install_producer()

    # -- set-up ---------------------------------------------------------------------------
    def _install_producer(self, *, in_commit: bool = False) -> Producer:
        """Start a transactional producer for the slot. Its ``init_transactions`` fences
        whatever a predecessor with the same transactional id (another process, or our own
        wedged producer) left open, and settles that transaction on the coordinator.

        Raises:
            StoreError: ``init_transactions`` failed (a :class:`CommitError` if ``in_commit``).
        """
        producer = Producer(self._store.settings.transactional_config(self.transactional_id))
        calls = _CallThread(f"kafka-producer-{self.transactional_id}")
        action = f"init_transactions({self.transactional_id})"
        try:
            calls.call(
                functools.partial(producer.init_transactions, TXN_TIMEOUT_S),
                TXN_TIMEOUT_S + WEDGE_GRACE_S,
                action,
            )
        except KafkaException as exc:
            calls.stop()
            raise translate(exc, action, in_commit=in_commit) from exc
        except _Wedged as exc:
            self._wedged.append((producer, calls))
            error = CommitError if in_commit else StoreUnavailableError
            raise error(f"{action} failed: {exc}", code="_WEDGED", retriable=True) from exc
        self._producer, self._calls = producer, calls
        return producer

    def _drop_producer(self, *, wedged: bool) -> None:
        """Forget the producer; a wedged one is kept alive but never touched again."""
        producer, calls = self._producer, self._calls
        self._producer = self._calls = None
        if producer is None or calls is None:
            return
        if wedged:
            self._wedged.append((producer, calls))
        else:
            calls.stop()

    def _replace_producer(self, why: str, *, wedged: bool) -> None:
        """Drop the producer and start a new one at once, so the old transaction is settled
        now (the log's last stable offset and the group's pending offsets wait on it), not
        when the coordinator's transaction timeout aborts it. If the new one cannot start yet,
        the next commit tries again."""
        log.warning("replacing the transactional producer", group=self.group, reason=why)
        self._drop_producer(wedged=wedged)
        try:
            self._install_producer(in_commit=True)
        except CommitError as exc:
            log.warning("new transactional producer not ready", group=self.group, error=str(exc))

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
        if not self._superseded:
            return None
        return SupersededError(
            f"worker slot {self.transactional_id} was taken over", code="_FENCED"
        )

    async def _commit(self, commit: AtomicCommit) -> None:
        await self._on_txn_thread(lambda: self._commit_sync(commit))

    def _commit_sync(self, commit: AtomicCommit) -> None:
        producer = self._ready_producer()
        if commit.state and not self._state_ready:
            partitions = max(self._store.topic_partitions(t) or 1 for t in self._topics)
            self._store.ensure_topics([self._state_topic], partitions, compacted=True)
            self._state_ready = True
        try:
            producer.begin_transaction()
        except KafkaException as exc:
            error = self._failure(exc, "begin_transaction")
            if self._producer is not None:  # not fatal: a state the producer cannot leave
                self._replace_producer(f"begin_transaction failed: {exc}", wedged=False)
            raise error from exc
        try:
            for rec in itertools.chain(commit.outputs, commit.dead_letters):
                self._store.produce(producer, rec)
            for update in commit.state:
                self._store.produce(
                    producer,
                    OutgoingRecord(
                        self._state_topic,
                        update.key.encode(),
                        update.value,
                        partition=update.partition,
                    ),
                )
            if commit.offsets:
                offsets = [
                    KafkaTP(tp.topic, tp.partition, c.offset, c.metadata)
                    for tp, c in commit.offsets.items()
                ]
                self._send_offsets(producer, offsets)
        except KafkaException as exc:
            error = self._failure(exc, "transaction")
            self._abort()
            raise error from exc
        except _Wedged as exc:
            raise self._on_wedged(exc) from exc
        self._commit_transaction(producer)

    def _ready_producer(self) -> Producer:
        """The producer for the next transaction, started anew after a failure.

        Raises:
            SupersededError: another process took over the slot.
            CommitError: a new producer could not start yet (retriable).
        """
        # :meth:`commit` checked this already; again here, on the thread that sets the flag,
        # because a superseded slot must never start a producer (it would fence its successor).
        superseded = self._superseded_error()
        if superseded is not None:
            raise superseded
        if self._producer is None:
            return self._install_producer(in_commit=True)
        return self._producer

    def _call(self, fn: Callable[[], T], timeout: float, what: str) -> T:
        """A blocking call on the current producer's thread, given ``timeout`` plus grace."""
        assert self._calls is not None
        return self._calls.call(fn, timeout + WEDGE_GRACE_S, what)

    def _on_wedged(self, exc: _Wedged) -> CommitError:
        """Give up on the wedged producer; the new one settles its transaction."""
        self._replace_producer(str(exc), wedged=True)
        return CommitError(f"transaction abandoned: {exc}", code="_WEDGED", retriable=True)

    def _send_offsets(self, producer: Producer, offsets: list[Any]) -> None:
        """``send_offsets_to_transaction``, retried while it fails retriably and time is left
        (a coordinator moving or loading after a broker restart)."""
        deadline = time.monotonic() + TXN_TIMEOUT_S
        while True:
            remaining = max(1.0, deadline - time.monotonic())
            try:
                self._call(
                    functools.partial(
                        producer.send_offsets_to_transaction,
                        offsets,
                        self._group_metadata,
                        remaining,
                    ),
                    remaining,
                    "send_offsets_to_transaction",
                )
                return
            except KafkaException as exc:
                err = kafka_error(exc)
                if (
                    err is None
                    or not err.retriable()
                    or err.txn_requires_abort()
                    or err.fatal()
                    or time.monotonic() >= deadline
                ):
                    raise
                log.warning(
                    "send_offsets_to_transaction retrying", group=self.group, error=err.str()
                )

    def _commit_transaction(self, producer: Producer) -> None:
        for attempt in range(COMMIT_RETRIES):
            try:
                self._call(
                    functools.partial(producer.commit_transaction, TXN_TIMEOUT_S),
                    TXN_TIMEOUT_S,
                    "commit_transaction",
                )
                return
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is not None and err.retriable() and not err.txn_requires_abort():
                    log.warning(
                        "commit retrying", group=self.group, attempt=attempt + 1, error=err.str()
                    )
                    continue  # never abort after a commit timeout: retry the commit
                error = self._failure(exc, "commit_transaction")
                self._abort()
                raise error from exc
            except _Wedged as exc:
                # Whether the commit went through is unknown; the new producer's
                # init_transactions lets the coordinator finish it if it had begun, and the
                # runner learns which from the committed offsets. No abort, no second commit.
                raise self._on_wedged(exc) from exc
        # Still not through: the new producer settles it as above, instead of this one
        # retrying for ever in a state no next transaction can begin from.
        self._replace_producer("commit_transaction did not finish", wedged=False)
        raise CommitError(
            f"commit_transaction did not finish after {COMMIT_RETRIES} tries", retriable=True
        )

    def _failure(self, exc: KafkaException, action: str) -> Exception:
        """Our error for a failed transactional call. A fatal error ends the producer: when
        another process took over the slot the member is superseded; any other fatal error
        (e.g. the idempotent producer's sequence state is lost) drops the producer, the next
        commit starts a new one (whose ``init_transactions`` aborts what is left open) and the
        runner redoes from the committed offsets."""
        err = kafka_error(exc)
        if err is not None and err.fatal():
            if superseded_by(err):
                self._superseded = True
                self._drop_producer(wedged=False)
                return SupersededError(
                    f"worker slot {self.transactional_id} was taken over by a newer process "
                    f"({err.name()}: {err.str()})",
                    code=err.name(),
                )
            self._drop_producer(wedged=False)
            log.warning(
                "transactional producer failed fatally; a new one takes over",
                group=self.group,
                error=err.str(),
            )
            return CommitError(
                f"{action} failed: {err.name()}: {err.str()} (fatal: producer replaced)",
                code=err.name(),
                retriable=True,
            )
        return translate(exc, action, in_commit=True)

    def _abort(self) -> None:
        """Abort the open transaction; retried while retriable, and when it cannot finish the
        producer is replaced (whose ``init_transactions`` aborts the transaction instead)."""
        producer = self._producer
        if producer is None:
            return
        for _ in range(ABORT_RETRIES):
            try:
                self._call(
                    functools.partial(producer.abort_transaction, TXN_TIMEOUT_S),
                    TXN_TIMEOUT_S,
                    "abort_transaction",
                )
                return
            except KafkaException as exc:
                err = kafka_error(exc)
                log.warning("abort_transaction failed", group=self.group, error=str(exc))
                if err is not None and err.fatal():
                    self._superseded = superseded_by(err)
                    self._drop_producer(wedged=False)
                    return
                if err is None or not err.retriable():
                    break
            except _Wedged as exc:
                self._replace_producer(str(exc), wedged=True)
                return
        self._replace_producer("abort_transaction did not finish", wedged=False)

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
        await self._on_txn_thread(self._close_producer)
        self._poll_thread.shutdown(wait=False)
        self._txn_thread.shutdown(wait=False)

    def _close_consumer(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close failed", group=self.group, error=str(exc))

    def _close_producer(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
        self._drop_producer(wedged=False)


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
