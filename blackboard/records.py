"""The plain records every store moves: what is read, what is written, what is committed."""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from blackboard.artifacts import Envelope

Headers = tuple[tuple[str, bytes], ...]


class TopicPartition(NamedTuple):
    """One partition of one topic."""

    topic: str
    partition: int


@dataclass(slots=True, eq=True)
class Record:
    """A record as read from a store, at a known position. Read-only by convention: it is not
    a frozen dataclass because a frozen one costs ~5x as much to build, once per record read.

    An in-process store may keep the artifact's :class:`Envelope` instead of its encoded
    headers (``raw_headers`` then holds only extra headers); :attr:`headers` renders the wire
    form either way.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    raw_headers: Headers
    timestamp: float
    """Seconds since the epoch at which the store appended the record."""
    envelope: Envelope | None = None

    @property
    def headers(self) -> Headers:
        """The record's headers as they are on the wire."""
        if self.envelope is None:
            return self.raw_headers
        from blackboard.wire import encode_headers

        return encode_headers(self.envelope) + self.raw_headers

    @property
    def tp(self) -> TopicPartition:
        """The record's topic and partition."""
        return TopicPartition(self.topic, self.partition)

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or None."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None


@dataclass(slots=True)
class OutgoingRecord:
    """A record to append. ``partition`` None means: choose from the key."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    partition: int | None = None
    envelope: Envelope | None = None
    """Set (and ``headers`` left empty) only for stores that keep envelopes in process."""

    def wire_headers(self) -> Headers:
        """The headers to send: the envelope's rendered, then the explicit ones."""
        if self.envelope is None:
            return self.headers
        from blackboard.wire import encode_headers

        return encode_headers(self.envelope) + self.headers


@dataclass(frozen=True, slots=True)
class CommittedOffset:
    """A group's committed position in a partition: the next offset to read, and metadata.

    The metadata carries the offsets above ``offset`` that already finished (see
    :mod:`blackboard.offsets`); it is limited to a few KB, as Kafka limits it.
    """

    offset: int
    metadata: str = ""


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """A write to an agent's state store: ``value`` None deletes ``key``."""

    partition: int
    key: str
    value: bytes | None


@dataclass(slots=True)
class AtomicCommit:
    """Everything one commit makes visible together, or not at all (docs/DESIGN.md §3)."""

    outputs: list[OutgoingRecord] = field(default_factory=list)
    offsets: dict[TopicPartition, CommittedOffset] = field(default_factory=dict)
    dead_letters: list[OutgoingRecord] = field(default_factory=list)
    state: list[StateUpdate] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.outputs or self.offsets or self.dead_letters or self.state)


#: What a header costs on the wire besides its name and value (Kafka's length varints), at most.
HEADER_OVERHEAD = 8


def headers_size(headers: Headers) -> int:
    """Bytes ``headers`` add to a record: names, values and their lengths."""
    try:  # one C-level pass over names and values (this runs for every record written)
        return sum(map(len, itertools.chain.from_iterable(headers))) + HEADER_OVERHEAD * len(
            headers
        )
    except TypeError:  # a header without a value (None)
        return sum(len(name) + len(value or b"") + HEADER_OVERHEAD for name, value in headers)


def record_size(rec: OutgoingRecord) -> int:
    """Bytes of ``rec`` that count against a store's record limit: key, value and every
    header, as librdkafka counts them against ``message.max.bytes``."""
    return len(rec.key or b"") + len(rec.value or b"") + headers_size(rec.wire_headers())


def oversize(rec: OutgoingRecord, limit: int) -> int | None:
    """:func:`record_size` of ``rec`` if it is over ``limit``, else None; a record far below
    the limit is not rendered (its envelope's headers are bounded from its fields)."""
    size = len(rec.key or b"") + len(rec.value or b"") + headers_size(rec.headers)
    if rec.envelope is not None:
        size += envelope_headers_bound(rec.envelope)
    if size <= limit:
        return None
    size = record_size(rec)
    return size if size > limit else None


def envelope_headers_bound(env: Envelope) -> int:
    """At least the bytes an envelope's rendered ``bb.*`` headers take (cheap: no rendering)."""
    text = len(env.type) + len(env.correlation_id) + len(env.tenant) + len(env.produced_by)
    return 512 + 4 * text + 40 * len(env.causation_ids)


def partition_for(key: bytes | None, partitions: int) -> int:
    """The partition of ``key``: CRC32 modulo the partition count.

    This is librdkafka's ``consistent`` partitioner, so a plain confluent-kafka or kcat
    producer keying records the same way lands them on the same partitions. Every store uses
    this function, which keeps topics co-partitioned by key.
    """
    if not key:
        return 0
    return zlib.crc32(key) % partitions
