"""``kafka://host:port[,host:port][?librdkafka.key=value...]`` — Apache Kafka via confluent-kafka.

Topics are created on demand with the blackboard's partition count (and the cluster's default
replication factor). External publishes go through one idempotent producer. Group members
(:mod:`blackboard.stores.kafka.member`) consume ``read_committed`` and commit through the worker
slot's transactional producer. End offsets are *last stable offsets* (the ``read_committed``
view), so lag never counts records of open or aborted transactions. Records are partitioned by
:func:`~blackboard.records.partition_for`, the same function every store uses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
)
from confluent_kafka import TopicPartition as KafkaTP
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec  # type: ignore[attr-defined]

from blackboard.errors import DeliveryUnknownError, StoreError, StoreUnavailableError, TopicError
from blackboard.records import (
    CommittedOffset,
    OutgoingRecord,
    Record,
    TopicPartition,
    partition_for,
)
from blackboard.store import GroupMember, RebalanceListener, Store
from blackboard.stores.kafka.errors import translate
from blackboard.stores.kafka.member import KafkaMember, record_of
from blackboard.stores.kafka.settings import KafkaSettings

ADMIN_TIMEOUT_S = 15.0
#: How long admin reads retry while the cluster is briefly unavailable (a broker restarting).
UNAVAILABLE_RETRY_S = 5.0
#: How long a stable read of committed offsets (or of a state changelog) waits for pending
#: transactions before reporting a retriable error. Pending commits settle in milliseconds;
#: an abandoned one is aborted by the coordinator after the transaction timeout (60 s).
UNSTABLE_WAIT_S = 10.0
_INTERNAL = ("__consumer_offsets", "__transaction_state")


def _pending_tries() -> Iterator[None]:
    """Tries while pending transactions settle: one at once, then after 10 ms doubling to
    0.5 s, for :data:`UNSTABLE_WAIT_S` (the caller returns once settled, and raises
    :func:`_still_pending` when the tries run out)."""
    deadline = time.monotonic() + UNSTABLE_WAIT_S
    delay = 0.01
    while True:
        yield
        if time.monotonic() + delay > deadline:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _still_pending(what: str) -> StoreUnavailableError:
    """The retriable error for a transaction still pending after :data:`UNSTABLE_WAIT_S`."""
    return StoreUnavailableError(
        f"{what} after {UNSTABLE_WAIT_S:.0f}s", code="UNSTABLE_OFFSET_COMMIT", retriable=True
    )


def _maybe_written(err: Any) -> bool:
    """Whether a failed delivery may still have been written (the idempotent producer gave up
    waiting for an answer), rather than refused."""
    # librdkafka names its local (client-side) error codes with a leading underscore.
    timed_out = (KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT)  # noqa: SLF001
    return bool(err.code() in timed_out)


class KafkaStore(Store):
    """The Kafka backend."""

    system = "kafka"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.settings = KafkaSettings.from_url(url)
        self.max_record_bytes = int(self.settings.producer_config()["message.max.bytes"])
        self._admin = AdminClient(self.settings.admin_config())
        self._delivery_timeout_s = (
            float(self.settings.producer_config()["message.timeout.ms"]) / 1000.0
        )
        self._partitions: dict[str, int] = {}
        self._producer: Producer | None = None
        self._reader: Consumer | None = None
        self._reader_lock = threading.Lock()
        self._closed = False
        try:
            self._admin.list_topics(timeout=10)
        except KafkaException as exc:
            raise StoreUnavailableError(
                f"cannot reach Kafka at {self.settings.bootstrap}: {exc.args[0].str()}",
                code=exc.args[0].name(),
                retriable=True,
            ) from exc

    # -- topics ---------------------------------------------------------------------------
    def create_topics(
        self, topics: Sequence[str], partitions: int, *, compacted: bool = False
    ) -> None:
        config = {"cleanup.policy": "compact"} if compacted else {}
        new = [
            NewTopic(t, num_partitions=partitions, replication_factor=-1, config=config)
            for t in topics
        ]
        for topic, future in self._admin.create_topics(
            new, operation_timeout=ADMIN_TIMEOUT_S
        ).items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise translate(exc, f"create topic {topic}") from exc
        self._wait_for_leaders(topics)

    def _wait_for_leaders(self, topics: Sequence[str]) -> None:
        deadline = time.monotonic() + ADMIN_TIMEOUT_S
        pending = set(topics)
        while pending:
            meta = self._admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
            for topic in list(pending):
                info = meta.get(topic)
                if (
                    info is not None
                    and info.error is None
                    and info.partitions
                    and all(p.leader >= 0 for p in info.partitions.values())
                ):
                    self._partitions[topic] = len(info.partitions)
                    pending.discard(topic)
            if pending and time.monotonic() > deadline:
                raise TopicError(
                    f"topics {sorted(pending)} have no leaders after {ADMIN_TIMEOUT_S}s"
                )
            if pending:
                time.sleep(0.05)

    def topic_partitions(self, topic: str) -> int | None:
        if topic in self._partitions:
            return self._partitions[topic]
        try:
            info = self._admin.list_topics(topic=topic, timeout=ADMIN_TIMEOUT_S).topics.get(topic)
        except KafkaException as exc:
            raise translate(exc, f"describe topic {topic}") from exc
        if info is None or info.error is not None or not info.partitions:
            return None
        self._partitions[topic] = len(info.partitions)
        return self._partitions[topic]

    def produce(self, producer: Producer, rec: OutgoingRecord, on_delivery: Any = None) -> None:
        """Hand ``rec`` to ``producer`` on its partition, waiting while the local queue is full.

        Raises:
            KafkaException: the producer refused the record.
        """
        partition = (
            rec.partition if rec.partition is not None else self.partition_of(rec.topic, rec.key)
        )
        headers: list[tuple[str, str | bytes | None]] = list(rec.wire_headers())
        while True:
            try:
                producer.produce(
                    rec.topic,
                    rec.value,
                    rec.key,
                    partition=partition,
                    headers=headers,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                producer.poll(0.05)  # queue full: let deliveries drain

    def partition_of(self, topic: str, key: bytes | None) -> int:
        """The partition a record with ``key`` goes to on ``topic``."""
        count = self.topic_partitions(topic)
        if count is None:
            raise TopicError(f"topic {topic} does not exist")
        return partition_for(key, count)

    def list_topics(self) -> list[str]:
        try:
            topics = self._admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
        except KafkaException as exc:
            raise translate(exc, "list topics") from exc
        return sorted(t for t in topics if t not in _INTERNAL)

    # -- records --------------------------------------------------------------------------
    def publish(self, records: Sequence[OutgoingRecord]) -> list[tuple[TopicPartition, int]]:
        if self._producer is None:
            self._producer = Producer(self.settings.producer_config())
        producer = self._producer
        results: list[Any] = [None] * len(records)

        def delivered(index: int) -> Any:
            def report(err: Any, msg: Any) -> None:
                results[index] = (
                    err if err is not None else (msg.topic(), msg.partition(), msg.offset())
                )

            return report

        for i, rec in enumerate(records):
            try:
                self.produce(producer, rec, on_delivery=delivered(i))
            except KafkaException as exc:
                raise translate(exc, f"publish to {rec.topic}") from exc
        # Wait for every delivery report: librdkafka gives one within message.timeout.ms, so
        # a record is then either written or refused, not "not delivered yet".
        deadline = time.monotonic() + self._delivery_timeout_s + ADMIN_TIMEOUT_S
        while producer.flush(max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                break
        unknown = tuple(
            i
            for i, result in enumerate(results)
            if result is None or (not isinstance(result, tuple) and _maybe_written(result))
        )
        if unknown:
            raise DeliveryUnknownError(
                f"{len(unknown)} of {len(records)} records neither confirmed nor refused "
                f"within {self._delivery_timeout_s:.0f}s: they may or may not be written "
                "(publishing them again may add a copy; reuse their artifact ids)",
                unconfirmed=unknown,
                code="_MSG_TIMED_OUT",
            )
        positions: list[tuple[TopicPartition, int]] = []
        for result in results:
            if not isinstance(result, tuple):
                raise translate(KafkaException(result), "publish")
            positions.append((TopicPartition(result[0], result[1]), result[2]))
        return positions

    def read(self, tp: TopicPartition, start: int, max_records: int) -> list[Record]:
        end = self.end_offsets_of([tp]).get(tp, 0)
        if start >= end or max_records <= 0:
            return []
        return self._read_range(tp, max(0, start), end, max_records)

    def _read_range(
        self, tp: TopicPartition, start: int, end: int, max_records: int
    ) -> list[Record]:
        """Committed records of ``tp`` in [start, end) (end = the last stable offset)."""
        with self._reader_lock:
            if self._reader is None:
                self._reader = Consumer(self.settings.reader_config())
            reader = self._reader
            reader.assign([KafkaTP(tp.topic, tp.partition, start)])
            out: list[Record] = []
            deadline = time.monotonic() + ADMIN_TIMEOUT_S
            try:
                while len(out) < max_records:
                    for m in reader.consume(min(500, max_records - len(out)), 0.05):
                        if m.error() is None:
                            out.append(record_of(m))
                    position = reader.position([KafkaTP(tp.topic, tp.partition)])[0].offset
                    if (out and out[-1].offset + 1 >= end) or position >= end:
                        break
                    if time.monotonic() > deadline:
                        raise StoreError(
                            f"reading {tp.topic}[{tp.partition}] timed out at {position}/{end}"
                        )
            finally:
                reader.unassign()
        return [r for r in out if r.offset < end][:max_records]

    def read_state(self, topic: str, partition: int) -> dict[str, bytes]:
        """A compacted changelog partition replayed into a dict (None values delete).

        Read once no transaction that had written to the partition is open: a new owner's
        restore must include its predecessor's last commit, whose records are in the log (its
        commit is stable) while its markers may not be yet, so the last stable offset is still
        below them. Waits for the last stable offset to reach the high watermark seen first.

        Raises:
            StoreUnavailableError: a transaction still open after :data:`UNSTABLE_WAIT_S`
                (retriable), or the cluster cannot be reached.
        """
        if self.topic_partitions(topic) is None:
            return {}
        tp = TopicPartition(topic, partition)
        end = self._settled_end(tp)
        state: dict[str, bytes] = {}
        if end == 0:
            return state
        for rec in self._read_range(tp, 0, end, 1 << 62):
            key = (rec.key or b"").decode()
            if rec.value is None:
                state.pop(key, None)
            else:
                state[key] = rec.value
        return state

    def _settled_end(self, tp: TopicPartition) -> int:
        """The last stable offset of ``tp`` once it reached the high watermark read first
        (every transaction that had written to ``tp`` by then is committed or aborted)."""
        high = self._list_offsets([tp], IsolationLevel.READ_UNCOMMITTED)[tp]
        stable = 0
        for _ in _pending_tries():
            stable = self.end_offsets_of([tp])[tp]
            if stable >= high:
                return stable
        raise _still_pending(
            f"{tp.topic}[{tp.partition}]: a transaction is still open (last stable offset "
            f"{stable}, high watermark {high})"
        )

    def end_offsets(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        tps = [TopicPartition(t, p) for t in topics for p in range(self.topic_partitions(t) or 0)]
        return self.end_offsets_of(tps)

    def end_offsets_of(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Last stable offsets (the ``read_committed`` end) of ``tps``.

        Retried for a few seconds while the cluster is briefly unavailable (a broker that just
        restarted answers FENCED_LEADER_EPOCH or has no leader for a moment).
        """
        if not tps:
            return {}
        deadline = time.monotonic() + UNAVAILABLE_RETRY_S
        delay = 0.1
        while True:
            try:
                return self._list_stable_offsets(tps)
            except StoreUnavailableError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _list_stable_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return self._list_offsets(tps, IsolationLevel.READ_COMMITTED)

    def _list_offsets(
        self, tps: Sequence[TopicPartition], isolation: IsolationLevel
    ) -> dict[TopicPartition, int]:
        """End offsets of ``tps``: last stable offsets (READ_COMMITTED) or high watermarks."""
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        request = {KafkaTP(tp.topic, tp.partition): latest for tp in tps}
        futures = self._admin.list_offsets(
            request, isolation_level=isolation, request_timeout=ADMIN_TIMEOUT_S
        )
        out: dict[TopicPartition, int] = {}
        for ktp, future in futures.items():
            try:
                out[TopicPartition(ktp.topic, ktp.partition)] = future.result().offset
            except KafkaException as exc:
                raise translate(exc, f"list offsets of {ktp.topic}[{ktp.partition}]") from exc
        return out

    # -- groups ---------------------------------------------------------------------------
    def group_offsets(
        self,
        group: str,
        *,
        stable: bool = False,
        partitions: Iterable[TopicPartition] | None = None,
    ) -> dict[TopicPartition, CommittedOffset]:
        """Committed offsets of ``group`` (of ``partitions`` when given; a partition the
        group never committed is absent).

        With ``stable`` (KIP-447) the answer counts pending transactional commits: the broker
        does not wait for them, it answers ``UNSTABLE_OFFSET_COMMIT`` for such a partition, as
        a per-partition error that confluent-kafka does not raise. Those partitions are asked
        again until they are stable. Ask with ``partitions``: a fetch of all the group's
        offsets leaves out a partition whose first commit is still pending, as if it had never
        committed.

        Raises:
            StoreUnavailableError: offsets still unstable after :data:`UNSTABLE_WAIT_S`
                (retriable), or the cluster cannot be reached.
        """
        wanted = sorted(set(partitions)) if partitions is not None else None
        if wanted is not None and not wanted:
            return {}
        found: dict[TopicPartition, CommittedOffset] = {}
        unstable: list[TopicPartition] = []
        for _ in _pending_tries():
            offsets, unstable = self._fetch_group_offsets(group, stable, wanted)
            found.update(offsets)
            if not unstable:
                return found
            wanted = unstable  # the stable ones are known already
        names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in unstable[:5])
        raise _still_pending(
            f"committed offsets of group {group} still unstable (a transaction is pending on "
            f"{names})"
        )

    def _fetch_group_offsets(
        self, group: str, stable: bool, partitions: list[TopicPartition] | None
    ) -> tuple[dict[TopicPartition, CommittedOffset], list[TopicPartition]]:
        """One OffsetFetch: the committed offsets, and the partitions answered unstable."""
        request = (
            ConsumerGroupTopicPartitions(
                group, [KafkaTP(tp.topic, tp.partition) for tp in partitions]
            )
            if partitions is not None
            else ConsumerGroupTopicPartitions(group)
        )
        futures = self._admin.list_consumer_group_offsets(
            [request], require_stable=stable, request_timeout=ADMIN_TIMEOUT_S
        )
        try:
            result = futures[group].result()
        except KafkaException as exc:
            if exc.args[0].name() in ("GROUP_ID_NOT_FOUND", "_NOENT"):
                return {}, []
            raise translate(exc, f"offsets of group {group}") from exc
        found: dict[TopicPartition, CommittedOffset] = {}
        unstable: list[TopicPartition] = []
        for p in result.topic_partitions or ():
            tp = TopicPartition(p.topic, p.partition)
            if p.error is not None:  # per partition: never raised by confluent-kafka
                if p.error.code() == KafkaError.UNSTABLE_OFFSET_COMMIT:
                    unstable.append(tp)
                    continue
                raise translate(
                    KafkaException(p.error),
                    f"offsets of group {group} on {tp.topic}[{tp.partition}]",
                )
            if p.offset >= 0:
                found[tp] = CommittedOffset(p.offset, p.metadata or "")
        return found, unstable

    def list_groups(self) -> list[str]:
        try:
            result = self._admin.list_consumer_groups(request_timeout=ADMIN_TIMEOUT_S).result()
        except KafkaException as exc:
            raise translate(exc, "list groups") from exc
        return sorted(g.group_id for g in result.valid if g.group_id != "kafka-blackboard-reader")

    async def join(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        member_name: str = "",
    ) -> GroupMember:
        member = KafkaMember(self, group, topics, listener, slot=member_name or "0")
        await member.start()
        return member

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._producer is not None:
            self._producer.flush(ADMIN_TIMEOUT_S)
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
