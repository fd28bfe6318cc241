"""What the Kafka store reads back: committed records (through a group-less
``read_committed`` consumer), end offsets, committed offsets of groups and state changelogs.

End offsets are *last stable offsets* (the ``read_committed`` view), so lag never counts
records of open or aborted transactions. What a new owner starts from — committed offsets read
with ``require_stable``, and its state restore — waits out pending transactions instead of
reading them as missing (docs/DESIGN.md §4).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
)
from confluent_kafka import TopicPartition as KafkaTP
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from blackboard.errors import StoreError, StoreUnavailableError
from blackboard.records import CommittedOffset, Record, TopicPartition
from blackboard.stores.kafka.errors import translate
from blackboard.stores.kafka.member import record_of
from blackboard.stores.kafka.settings import ADMIN_TIMEOUT_S, KafkaSettings

#: How long admin reads retry while the cluster is briefly unavailable (a broker restarting).
UNAVAILABLE_RETRY_S = 5.0
#: How long a stable read of committed offsets (or of a state changelog) waits for pending
#: transactions before reporting a retriable error. Pending commits settle in milliseconds;
#: an abandoned one is aborted by the coordinator after the transaction timeout (60 s).
UNSTABLE_WAIT_S = 10.0


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


class KafkaReads:
    """The store's reads of what is committed. Thread-safe: the reader consumer is used under
    a lock, the admin client is shared with the store.

    Args:
        admin: the store's admin client.
        settings: the store's settings (the reader's configuration).
    """

    def __init__(self, admin: AdminClient, settings: KafkaSettings) -> None:
        self._admin = admin
        self._settings = settings
        self._reader: Consumer | None = None
        self._reader_lock = threading.Lock()

    # -- records --------------------------------------------------------------------------
    def read(self, tp: TopicPartition, start: int, max_records: int) -> list[Record]:
        """Committed records of ``tp`` from ``start`` on (below its last stable offset)."""
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
                self._reader = Consumer(self._settings.reader_config())
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

    # -- state ----------------------------------------------------------------------------
    def replay_state(self, tp: TopicPartition) -> dict[str, bytes]:
        """A compacted changelog partition replayed into a dict (None values delete).

        Read once no transaction that had written to the partition is open: a new owner's
        restore must include its predecessor's last commit, whose records are in the log (its
        commit is stable) while its markers may not be yet, so the last stable offset is still
        below them. Waits for the last stable offset to reach the high watermark seen first.

        Raises:
            StoreUnavailableError: a transaction still open after :data:`UNSTABLE_WAIT_S`
                (retriable), or the cluster cannot be reached.
        """
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

    # -- end offsets ----------------------------------------------------------------------
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
                return self._list_offsets(tps, IsolationLevel.READ_COMMITTED)
            except StoreUnavailableError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

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

    # -- committed offsets of groups ------------------------------------------------------
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

    def close(self) -> None:
        """Close the reader consumer (if one was started)."""
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
