"""``kafka://host:port[,host:port][?librdkafka.key=value...]`` — Apache Kafka via confluent-kafka.

Topics are created on demand with the blackboard's partition count (and the cluster's default
replication factor). External publishes go through one idempotent producer. Group members
(:mod:`blackboard.stores.kafka.member`) consume ``read_committed`` and commit through the worker
slot's transactional producer. Reads of what is committed — records, last stable offsets,
committed offsets, state changelogs — are :mod:`blackboard.stores.kafka.reads`. Records are
partitioned by :func:`~blackboard.records.partition_for`, the same function every store uses.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from blackboard.errors import DeliveryUnknownError, StoreUnavailableError, TopicError
from blackboard.records import (
    CommittedOffset,
    OutgoingRecord,
    Record,
    TopicPartition,
    partition_for,
)
from blackboard.store import GroupMember, RebalanceListener, Store
from blackboard.stores.kafka.errors import translate
from blackboard.stores.kafka.member import KafkaMember
from blackboard.stores.kafka.reads import KafkaReads
from blackboard.stores.kafka.settings import ADMIN_TIMEOUT_S, KafkaSettings

_INTERNAL = ("__consumer_offsets", "__transaction_state")


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
        self._reads = KafkaReads(self._admin, self.settings)
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
        return self._reads.read(tp, start, max_records)

    def read_state(self, topic: str, partition: int) -> dict[str, bytes]:
        """The state changelog ``topic``'s ``partition`` as a dict, once no transaction that
        had written to it is open (:meth:`KafkaReads.replay_state`); empty if the changelog
        does not exist.

        Raises:
            StoreUnavailableError: a transaction still open (retriable), or the cluster cannot
                be reached.
        """
        if self.topic_partitions(topic) is None:
            return {}
        return self._reads.replay_state(TopicPartition(topic, partition))

    def end_offsets(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        tps = [TopicPartition(t, p) for t in topics for p in range(self.topic_partitions(t) or 0)]
        return self.end_offsets_of(tps)

    def end_offsets_of(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Last stable offsets (the ``read_committed`` end) of ``tps``
        (:meth:`KafkaReads.end_offsets_of`)."""
        return self._reads.end_offsets_of(tps)

    # -- groups ---------------------------------------------------------------------------
    def group_offsets(
        self,
        group: str,
        *,
        stable: bool = False,
        partitions: Iterable[TopicPartition] | None = None,
    ) -> dict[TopicPartition, CommittedOffset]:
        """Committed offsets of ``group`` (of ``partitions`` when given); with ``stable``,
        pending transactional commits are waited for (:meth:`KafkaReads.group_offsets`).

        Raises:
            StoreUnavailableError: offsets still unstable (retriable), or the cluster cannot
                be reached.
        """
        return self._reads.group_offsets(group, stable=stable, partitions=partitions)

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
        self._reads.close()
