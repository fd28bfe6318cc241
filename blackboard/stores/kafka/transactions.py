"""The worker slot's transactions on Kafka: its transactional producer and the steps of one
atomic commit (docs/DESIGN.md §3, §4).

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

import functools
import itertools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from confluent_kafka import KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTP

from blackboard.errors import CommitError, StoreUnavailableError, SupersededError
from blackboard.logs import get_logger
from blackboard.records import AtomicCommit, OutgoingRecord
from blackboard.stores.kafka.errors import kafka_error, superseded_by, translate
from blackboard.stores.kafka.watchdog import CallThread, Wedged

if TYPE_CHECKING:
    from blackboard.stores.kafka.store import KafkaStore

T = TypeVar("T")
log = get_logger("kafka")

TXN_TIMEOUT_S = 30.0
COMMIT_RETRIES = 20
ABORT_RETRIES = 3
#: How long past its own timeout a transactional call may run before its producer counts as
#: wedged. Timeout plus grace stays below the transaction timeout (60 s), so the new producer
#: settles a wedged transaction before the coordinator aborts it on its own.
WEDGE_GRACE_S = 15.0


class SlotTransactions:
    """The worker slot's transactional producer and the transactions of its commits.

    One thread at a time: the member calls everything but :meth:`superseded_error` on its
    transaction thread (the constructor on the caller's, before that thread runs anything), so
    only that thread changes the producer.

    Args:
        store: the store whose topics the transactions write.
        group: the consumer group whose offsets they commit.
        transactional_id: the worker slot's ``transactional.id``.
        topics: the group's input topics (the state changelog gets as many partitions).
        state_topic: the group's state changelog.
        group_metadata: the consumer's current group metadata, asked at each
            ``send_offsets_to_transaction``.

    Raises:
        StoreError: the first producer's ``init_transactions`` failed.
    """

    def __init__(
        self,
        store: KafkaStore,
        group: str,
        transactional_id: str,
        *,
        topics: Sequence[str],
        state_topic: str,
        group_metadata: Callable[[], Any],
    ) -> None:
        self.group = group
        self.transactional_id = transactional_id
        self._store = store
        self._topics = list(topics)
        self._state_topic = state_topic
        self._state_ready = False
        self._group_metadata = group_metadata
        # The producer and the thread its blocking calls run on; both None between a failure
        # and the next commit, which starts a new pair.
        self._producer: Producer | None = None
        self._calls: CallThread | None = None
        self._superseded = False
        # Producers with a call stuck inside: kept referenced so they are never destroyed
        # under that call, and never used again.
        self._wedged: list[tuple[Producer, CallThread]] = []
        self._install_producer()

    def superseded_error(self) -> SupersededError | None:
        """The error for a slot another process took over, or None (any thread)."""
        if not self._superseded:
            return None
        return SupersededError(
            f"worker slot {self.transactional_id} was taken over", code="_FENCED"
        )

    # -- producers ------------------------------------------------------------------------
    def _install_producer(self, *, in_commit: bool = False) -> Producer:
        """Start a transactional producer for the slot. Its ``init_transactions`` fences
        whatever a predecessor with the same transactional id (another process, or our own
        wedged producer) left open, and settles that transaction on the coordinator.

        Raises:
            StoreError: ``init_transactions`` failed (a :class:`CommitError` if ``in_commit``).
        """
        producer = Producer(self._store.settings.transactional_config(self.transactional_id))
        calls = CallThread(f"kafka-producer-{self.transactional_id}")
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
        except Wedged as exc:
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

    # -- one transaction ------------------------------------------------------------------
    def commit(self, commit: AtomicCommit) -> None:
        """``commit`` as one transaction.

        Raises:
            SupersededError: another process took over the slot.
            CommitError: the transaction failed (retriable); after a wedged or unfinished
                commit, the committed offsets say whether it went through.
            StoreError: another failed transactional call, translated.
        """
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
        except Wedged as exc:
            raise self._on_wedged(exc) from exc
        self._commit_transaction(producer)

    def _ready_producer(self) -> Producer:
        """The producer for the next transaction, started anew after a failure.

        Raises:
            SupersededError: another process took over the slot.
            CommitError: a new producer could not start yet (retriable).
        """
        # GroupMember.commit checked this already; again here, on the thread that sets the flag,
        # because a superseded slot must never start a producer (it would fence its successor).
        superseded = self.superseded_error()
        if superseded is not None:
            raise superseded
        if self._producer is None:
            return self._install_producer(in_commit=True)
        return self._producer

    def _call(self, fn: Callable[[], T], timeout: float, what: str) -> T:
        """A blocking call on the current producer's thread, given ``timeout`` plus grace."""
        assert self._calls is not None
        return self._calls.call(fn, timeout + WEDGE_GRACE_S, what)

    def _on_wedged(self, exc: Wedged) -> CommitError:
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
                        self._group_metadata(),
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
            except Wedged as exc:
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
            except Wedged as exc:
                self._replace_producer(str(exc), wedged=True)
                return
        self._replace_producer("abort_transaction did not finish", wedged=False)

    def close(self) -> None:
        """Flush and drop the producer (a wedged one stays abandoned)."""
        if self._producer is not None:
            self._producer.flush(5)
        self._drop_producer(wedged=False)
