"""Dead letters (DESIGN.md §5): the original record byte-for-byte plus ``bb.dlq.*`` headers."""

from __future__ import annotations

import time
import traceback
from typing import Literal

from blackboard.records import OutgoingRecord, Record
from blackboard.topics import TopicNames

Stage = Literal["deserialize", "validate", "process", "produce", "admission"]

H_STAGE = "bb.dlq.stage"
_MAX_TRACE = 8_000


def dead_letter(
    record: Record,
    *,
    stage: Stage,
    error: BaseException,
    group: str,
    agent: str,
    attempt: int = 1,
    first_failure_ts: float | None = None,
) -> OutgoingRecord:
    """The dead letter of ``record``: its key, value, headers and partition, on ``<topic>.dlq``."""
    trace = "".join(traceback.format_exception(error))[-_MAX_TRACE:]
    extra = (
        ("bb.dlq.original.topic", record.topic),
        ("bb.dlq.original.partition", str(record.partition)),
        ("bb.dlq.original.offset", str(record.offset)),
        ("bb.dlq.original.timestamp", repr(record.timestamp)),
        ("bb.dlq.consumer.group", group),
        ("bb.dlq.agent", agent),
        (H_STAGE, stage),
        ("bb.dlq.exception.class", f"{type(error).__module__}.{type(error).__qualname__}"),
        ("bb.dlq.exception.message", str(error)[:2000]),
        ("bb.dlq.exception.stacktrace", trace),
        ("bb.dlq.attempt", str(attempt)),
        ("bb.dlq.first_failure_ts", repr(first_failure_ts or time.time())),
    )
    headers = record.headers + tuple((k, v.encode()) for k, v in extra)
    return OutgoingRecord(
        topic=TopicNames.dlq(record.topic),
        key=record.key,
        value=record.value,
        headers=headers,
        partition=record.partition,
    )
