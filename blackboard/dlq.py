"""Dead letters (DESIGN.md §5): the original record byte-for-byte plus ``bb.dlq.*`` headers."""

from __future__ import annotations

import time
import traceback
from typing import Literal

from blackboard.records import OutgoingRecord, Record
from blackboard.topics import TopicNames

Stage = Literal["deserialize", "validate", "process", "timeout", "produce", "admission"]

H_STAGE = "bb.dlq.stage"
H_ATTEMPT = "bb.dlq.attempt"
H_FIRST_FAILURE = "bb.dlq.first_failure_ts"
#: Replay headers (DESIGN.md §5): the dead letter a record was replayed from, the replay's id
#: and time; plus the attempts and first failure so far, so a record that fails again returns
#: to the DLQ with its history.
H_REPLAY_OF = "bb.replay.of"
H_REPLAY_ID = "bb.replay.id"
H_REPLAY_TS = "bb.replay.ts"
H_REPLAY_AGENT = "bb.replay.agent"
H_REPLAY_ATTEMPTS = "bb.replay.attempts"
H_REPLAY_FIRST_FAILURE = "bb.replay.first_failure_ts"
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
        (H_ATTEMPT, str(attempt)),
        (H_FIRST_FAILURE, repr(first_failure_ts or time.time())),
    )
    # A replayed record's replay headers stay (the DLQ entry says where it was replayed from).
    headers = record.headers + tuple((k, v.encode()) for k, v in extra)
    return OutgoingRecord(
        topic=TopicNames.dlq(record.topic),
        key=record.key,
        value=record.value,
        headers=headers,
        partition=record.partition,
    )


def replay_history(record: Record) -> tuple[int, float | None]:
    """For a replayed record: the attempts made before its replay and when it first failed
    (0 and None for a record that was never dead-lettered)."""
    # Replay headers are never envelope fields, so the raw headers hold them on every store
    # (and reading those does not render an in-process record's envelope).
    found = {k: v for k, v in record.raw_headers if k in _HISTORY}
    attempts = found.get(H_REPLAY_ATTEMPTS)
    if attempts is None:
        return 0, None
    first = found.get(H_REPLAY_FIRST_FAILURE)
    try:
        return int(attempts), float(first) if first else None
    except ValueError:
        return 0, None


_HISTORY = {H_REPLAY_ATTEMPTS, H_REPLAY_FIRST_FAILURE}
