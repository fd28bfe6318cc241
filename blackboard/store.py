"""The store contract every backend implements (docs/DESIGN.md §3).

A :class:`Store` holds partitioned, append-only topics and consumer groups. A
:class:`GroupMember` is one member of one consumer group: the store spreads the group's
partitions across its members, and the member polls records and makes
:class:`~blackboard.records.AtomicCommit` s — outputs, dead letters, state writes and the
offsets of the inputs that caused them, visible together or not at all.

Backends implement the abstract methods; what every backend does alike lives here once: the
checks before a commit (:meth:`GroupMember.commit`, then the backend's :meth:`GroupMember._commit`),
the record-size and offset-metadata limits, the lag arithmetic and the topic checks. Admin and
publishing calls are synchronous (scripts, notebooks, CLI); the member's calls are ``async``
because a worker's event loop runs handlers while it waits for records.
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from blackboard.errors import RecordTooLargeError, StoreClosedError, SupersededError, TopicError
from blackboard.records import (
    AtomicCommit,
    CommittedOffset,
    OutgoingRecord,
    Record,
    TopicPartition,
    oversize,
)

#: Largest record a store accepts by default (librdkafka's default ``message.max.bytes``).
MAX_RECORD_BYTES = 1_000_000
#: Largest offset-commit metadata string every store accepts. Kafka's default
#: ``offset.metadata.max.bytes`` is 4096, but a transactional offset commit of 4096 characters
#: is refused with OFFSET_METADATA_TOO_LARGE (measured on 4.0.1 and 3.9.1); 4095 passes.
MAX_METADATA_CHARS = 4095


def check_record_sizes(records: Iterable[OutgoingRecord], limit: int) -> None:
    """Refuse ``records`` if one is over ``limit`` bytes (:func:`~blackboard.records.oversize`).

    Raises:
        RecordTooLargeError: code ``MSG_SIZE_TOO_LARGE``, as librdkafka names it.
    """
    for rec in records:
        size = oversize(rec, limit)
        if size is not None:
            raise RecordTooLargeError(
                f"record for {rec.topic} is {size} bytes, over the limit of {limit}",
                code="MSG_SIZE_TOO_LARGE",
            )


def check_commit_limits(commit: AtomicCommit, max_record_bytes: int) -> None:
    """Refuse ``commit`` if an offset's metadata is over :data:`MAX_METADATA_CHARS` or one of
    its outputs or dead letters is over ``max_record_bytes``.

    Raises:
        RecordTooLargeError: code ``OFFSET_METADATA_TOO_LARGE`` or ``MSG_SIZE_TOO_LARGE``.
    """
    for tp, done in commit.offsets.items():
        if len(done.metadata) > MAX_METADATA_CHARS:
            raise RecordTooLargeError(
                f"offset metadata for {tp.topic}[{tp.partition}] is {len(done.metadata)} "
                f"characters, over {MAX_METADATA_CHARS}",
                code="OFFSET_METADATA_TOO_LARGE",
            )
    check_record_sizes(itertools.chain(commit.outputs, commit.dead_letters), max_record_bytes)


class RebalanceListener(Protocol):
    """Told by a member, from inside :meth:`GroupMember.poll`, when its partitions change."""

    async def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """The member now owns ``partitions``; reading starts at the committed offsets."""

    async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """``partitions`` are about to move: the member still owns them and may commit."""

    async def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        """``partitions`` were taken away already: commits for them would be refused."""


@dataclass(frozen=True, slots=True)
class LagRow:
    """How far one group is behind on one partition."""

    group: str
    topic: str
    partition: int
    end_offset: int
    committed_offset: int | None
    lag: int


class GroupMember(abc.ABC):
    """One member of one consumer group (one agent in one worker process).

    Args:
        group: the consumer group.
        member_id: the member's name in log lines and errors.
        max_record_bytes: the store's :attr:`Store.max_record_bytes`, checked on every commit.
    """

    def __init__(self, group: str, member_id: str, *, max_record_bytes: int) -> None:
        self.group = group
        self.member_id = member_id
        self.max_record_bytes = max_record_bytes
        #: Set by the backend's :meth:`close`; a closed member's commits are refused.
        self._closed = False

    @abc.abstractmethod
    async def poll(self, max_records: int, timeout: float) -> list[Record]:
        """Records from the member's partitions, in offset order per partition.

        Waits up to ``timeout`` seconds when none are ready. Rebalance callbacks run inside
        this call, before any record of a newly assigned partition is returned.
        """

    async def commit(self, commit: AtomicCommit) -> None:
        """Make ``commit`` visible atomically: the checks every store makes alike, then the
        backend's :meth:`_commit`.

        Raises:
            StoreClosedError: the member is closed.
            SupersededError: a newer process took over the member's worker slot.
            RecordTooLargeError: an output, a dead letter or an offset's metadata is over its
                limit (nothing was sent).
            FencedError: the member does not own a partition it commits offsets or state for.
            TopicError: an output's topic or partition does not exist.
            CommitError: nothing was committed (retry or redo the records).
        """
        if self._closed:
            raise StoreClosedError(f"member {self.member_id} is closed")
        superseded = self._superseded_error()
        if superseded is not None:
            raise superseded
        if not self.checks_in_commit:
            check_commit_limits(commit, self.max_record_bytes)
        await self._commit(commit)

    #: True for a backend whose :meth:`_commit` runs :func:`check_commit_limits` itself, on a
    #: thread of its own (Kafka's transaction thread), rather than on the event loop.
    checks_in_commit: bool = False

    @abc.abstractmethod
    async def _commit(self, commit: AtomicCommit) -> None:
        """The backend's atomic commit, once :meth:`commit`'s checks passed.

        Raises:
            FencedError, TopicError, CommitError: as :meth:`commit` says.
        """

    def _superseded_error(self) -> SupersededError | None:
        """The error for a member whose worker slot a newer process took over, or None. Stores
        without worker slots (the embedded one) are never superseded."""
        return None

    @abc.abstractmethod
    async def committed(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, CommittedOffset]:
        """The group's committed positions (partitions never committed are left out)."""

    @abc.abstractmethod
    async def load_state(self, partition: int) -> dict[str, bytes]:
        """The group's state entries for ``partition``, as last committed."""

    @abc.abstractmethod
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions the member owns now."""

    @abc.abstractmethod
    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` on (e.g. back to the committed offset after an abort)."""

    @abc.abstractmethod
    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop returning records of ``partitions`` until resumed (backpressure)."""

    @abc.abstractmethod
    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Undo :meth:`pause`."""

    def read_positions(self) -> dict[TopicPartition, int]:
        """Per owned partition, the offset below which the polls so far returned every record,
        taken as the last :meth:`poll` ended (read it after that poll returned). It runs past
        the last record returned where the log holds entries that are not records (Kafka's
        transaction markers and aborted records): committing it lets a drained group's lag
        reach 0. Stores whose offsets are dense return nothing."""
        return {}

    def attempt(self, record: Record) -> int:
        """How many times ``record`` was delivered to this group, counting this time (1 unless
        the store keeps delivery counts, as Redis does)."""
        return 1

    @abc.abstractmethod
    def wakeup(self) -> None:
        """Make a waiting :meth:`poll` return at once (thread-safe)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Leave the group without committing; its partitions move to the other members."""


class Store(abc.ABC):
    """A partitioned log of topics with consumer groups and atomic commits."""

    #: The largest record (key, value and headers, :func:`~blackboard.records.record_size`)
    #: the store accepts; backends with a setting for it override this.
    max_record_bytes: int = MAX_RECORD_BYTES

    # Capabilities: callers ask these (on a store, or on its class through
    # ``blackboard.stores.store_class(url)``) instead of guessing from the URL.

    #: The system behind the store, and the ``messaging.system`` of spans: ``memory``,
    #: ``kafka`` or ``redis``.
    system: str = "unknown"
    #: The store runs in this process: its calls do no network I/O, so callers may make them
    #: on the event loop (e.g. backpressure reads lag inline instead of on a thread).
    embedded: bool = False
    #: The store keeps :class:`Envelope` objects on records instead of encoded headers
    #: (in-process only). Other stores send ``OutgoingRecord.wire_headers()``.
    keeps_envelopes: bool = False

    def __init__(self, url: str) -> None:
        self.url = url

    # -- topics ---------------------------------------------------------------------------
    @abc.abstractmethod
    def create_topics(
        self, topics: Sequence[str], partitions: int, *, compacted: bool = False
    ) -> None:
        """Create the topics that do not exist yet (existing ones are left as they are)."""

    @abc.abstractmethod
    def topic_partitions(self, topic: str) -> int | None:
        """The partition count of ``topic``, or None if it does not exist."""

    @abc.abstractmethod
    def list_topics(self) -> list[str]:
        """Every topic name, sorted."""

    # -- records --------------------------------------------------------------------------
    @abc.abstractmethod
    def publish(self, records: Sequence[OutgoingRecord]) -> list[tuple[TopicPartition, int]]:
        """Append records from outside any group (idempotently); their positions, in order.

        Raises:
            RecordTooLargeError, TopicError, StoreError.
        """

    @abc.abstractmethod
    def read(self, tp: TopicPartition, start: int, max_records: int) -> list[Record]:
        """Committed records of ``tp`` from offset ``start`` on (never uncommitted ones)."""

    @abc.abstractmethod
    def end_offsets(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        """The offset after the last committed record of every partition of ``topics``."""

    # -- groups ---------------------------------------------------------------------------
    @abc.abstractmethod
    def group_offsets(self, group: str) -> dict[TopicPartition, CommittedOffset]:
        """Every committed position of ``group``."""

    @abc.abstractmethod
    def list_groups(self) -> list[str]:
        """The consumer groups that exist (have members or committed offsets), sorted."""

    @abc.abstractmethod
    async def join(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        member_name: str = "",
    ) -> GroupMember:
        """Join ``group`` subscribed to ``topics``; partitions arrive through ``listener``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and files. Idempotent."""

    def group_topics(self, group: str) -> set[str]:
        """Topics the live members of ``group`` subscribe to (backends that know say so)."""
        return set()

    # -- shared logic ---------------------------------------------------------------------
    def ensure_topics(
        self, topics: Iterable[str], partitions: int, *, compacted: bool = False
    ) -> None:
        """Create missing topics and check that existing ones have ``partitions`` partitions.

        Raises:
            TopicError: a topic exists with another partition count (topics must stay
                co-partitioned for joins).
        """
        wanted = sorted(set(topics))
        missing = [t for t in wanted if self.topic_partitions(t) is None]
        if missing:
            self.create_topics(missing, partitions, compacted=compacted)
        for topic in wanted:
            found = self.topic_partitions(topic)
            if found != partitions:
                raise TopicError(
                    f"topic {topic} has {found} partitions but the blackboard uses {partitions}; "
                    "artifact topics must be co-partitioned"
                )

    def lag(
        self, groups: Iterable[str] | None = None, topics: Iterable[str] | None = None
    ) -> list[LagRow]:
        """Per group, topic and partition: end offset, committed offset and lag.

        A group is shown for the topics it has committed on (or ``topics`` when given).
        """
        rows: list[LagRow] = []
        for group in sorted(groups) if groups is not None else self.list_groups():
            committed = self.group_offsets(group)
            group_topics = (
                set(topics)
                if topics is not None
                else {tp.topic for tp in committed} | self.group_topics(group)
            )
            ends = self.end_offsets(sorted(group_topics))
            for tp in sorted(ends):
                end = ends[tp]
                done = committed.get(tp)
                offset = done.offset if done is not None else None
                rows.append(
                    LagRow(group, tp.topic, tp.partition, end, offset, max(0, end - (offset or 0)))
                )
        return rows

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
