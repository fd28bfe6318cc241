"""Dead letters (DESIGN.md §5): the original record byte-for-byte plus ``bb.dlq.*`` headers."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Literal

from blackboard.records import OutgoingRecord, Record
from blackboard.topics import TopicNames

Stage = Literal["deserialize", "validate", "process", "timeout", "join", "produce", "admission"]

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
H_REPLAY_COUNT = "bb.replay.count"
H_REPLAY_LINK = "bb.replay.link"
#: State key prefix under which a runner notes the replayed artifacts it settled (reserved:
#: agents' own state keys must not start with ``bb.``).
REPLAYED_STATE_PREFIX = "bb.replayed:"
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


@dataclass(frozen=True, slots=True)
class ReplayInfo:
    """What a replayed record's ``bb.replay.*`` headers say."""

    of: str
    agent: str
    attempts: int
    first_failure_ts: float | None


def replay_info(record: Record) -> ReplayInfo | None:
    """The replay headers of ``record``, or None if it was never replayed from a DLQ.

    Replay headers are never envelope fields, so the raw headers hold them on every store (and
    reading those does not render an in-process record's envelope).
    """
    raw = record.raw_headers
    if not raw:
        return None
    found = dict(raw)  # one C-level pass (most records were never replayed)
    if found.get(H_REPLAY_OF) is None:
        return None
    try:
        attempts = int(found.get(H_REPLAY_ATTEMPTS) or b"0")
        first = found.get(H_REPLAY_FIRST_FAILURE)
        first_ts = float(first) if first else None
    except ValueError:
        attempts, first_ts = 0, None
    return ReplayInfo(
        of=found[H_REPLAY_OF].decode(errors="replace"),
        agent=(found.get(H_REPLAY_AGENT) or b"").decode(errors="replace"),
        attempts=attempts,
        first_failure_ts=first_ts,
    )
