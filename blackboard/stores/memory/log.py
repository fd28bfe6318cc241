"""The embedded store's log entries and consumer groups (plain values, cheap to keep)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from blackboard.artifacts import Envelope
from blackboard.records import (
    CommittedOffset,
    Headers,
    OutgoingRecord,
    Record,
    TopicPartition,
)

if TYPE_CHECKING:
    from blackboard.stores.memory.member import MemoryMember

#: One log entry: key, value, explicit headers, append time, envelope fields (or None).
Entry: TypeAlias = tuple[bytes | None, bytes | None, Headers, float, tuple[Any, ...] | None]


def entry_of(rec: OutgoingRecord, now: float) -> Entry:
    """The log entry of ``rec``, appended at ``now``."""
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
class Group:
    """One consumer group: its members, who owns and who should own each partition, the
    committed offsets and the per-partition state."""

    members: dict[str, MemoryMember] = field(default_factory=dict)
    owner: dict[TopicPartition, str] = field(default_factory=dict)
    target: dict[TopicPartition, str] = field(default_factory=dict)
    committed: dict[TopicPartition, CommittedOffset] = field(default_factory=dict)
    state: dict[int, dict[str, bytes]] = field(default_factory=dict)
