"""Dead letters (docs/DESIGN.md §5): the original record byte-for-byte plus ``bb.dlq.*`` headers."""

from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass
from typing import Literal

from blackboard.records import Headers, OutgoingRecord, Record, oversize, record_size
from blackboard.store import MAX_RECORD_BYTES
from blackboard.topics import TopicNames

Stage = Literal[
    "deserialize",
    "validate",
    "process",
    "timeout",
    "join",
    "produce",
    "admission",
    "llm_output",
    "budget",
]

H_STAGE = "bb.dlq.stage"
H_ATTEMPT = "bb.dlq.attempt"
H_FIRST_FAILURE = "bb.dlq.first_failure_ts"
#: Replay headers (docs/DESIGN.md §5): the dead letter a record was replayed from, the replay's id
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
H_TRUNCATED = "bb.dlq.truncated"
H_ORIGINAL_SIZE = "bb.dlq.original.size"
_MAX_TRACE = 8_000
_MAX_MESSAGE = 2_000
_SHORT_TRACE = 1_000
_SHORT_MESSAGE = 200
#: Original headers a dead letter keeps when the original's headers must be cut: enough to
#: name the artifact (the rest is read back from the original topic on replay).
_POINTER_HEADERS = frozenset({"bb.id", "bb.type", "bb.correlation_id", "bb.tenant"})


def dead_letter(
    record: Record,
    *,
    stage: Stage,
    error: BaseException,
    group: str,
    agent: str,
    attempt: int = 1,
    first_failure_ts: float | None = None,
    max_bytes: int = MAX_RECORD_BYTES,
) -> OutgoingRecord:
    """The dead letter of ``record``: its key, value, headers and partition, on ``<topic>.dlq``,
    plus the ``bb.dlq.*`` headers.

    A dead letter always fits ``max_bytes`` (the store's record limit), or the commit that
    writes it would fail for ever and stop the agent: when the original plus the headers do
    not fit, the stack trace and message are shortened first, then the value is left out, then
    the original headers, then the key; ``bb.dlq.truncated`` names what was cut and
    ``bb.dlq.original.size`` the original's size. The ``bb.dlq.original.*`` pointer stays,
    so replay reads a cut value back from the original topic.
    """
    trace = "".join(traceback.format_exception(error))[-_MAX_TRACE:]
    message = str(error)[:_MAX_MESSAGE]
    fields = _Letter(record.key, record.value, record.headers, trace, message)
    letter = fields.build(record, stage, error, group, agent, attempt, first_failure_ts)
    if oversize(letter, max_bytes) is None:
        return letter
    original = record_size(OutgoingRecord(record.topic, record.key, record.value, record.headers))
    for cut in _CUTS:
        fields = cut(fields)
        letter = fields.build(
            record, stage, error, group, agent, attempt, first_failure_ts, original
        )
        if oversize(letter, max_bytes) is None:
            break
    return letter


@dataclass(frozen=True, slots=True)
class _Letter:
    """What of the original a dead letter carries, and what was cut."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    trace: str
    message: str
    cut: tuple[str, ...] = ()

    def build(
        self,
        record: Record,
        stage: Stage,
        error: BaseException,
        group: str,
        agent: str,
        attempt: int,
        first_failure_ts: float | None,
        original_size: int | None = None,
    ) -> OutgoingRecord:
        extra = [
            ("bb.dlq.original.topic", record.topic),
            ("bb.dlq.original.partition", str(record.partition)),
            ("bb.dlq.original.offset", str(record.offset)),
            ("bb.dlq.original.timestamp", repr(record.timestamp)),
            ("bb.dlq.consumer.group", group),
            ("bb.dlq.agent", agent),
            (H_STAGE, stage),
            ("bb.dlq.exception.class", f"{type(error).__module__}.{type(error).__qualname__}"),
            ("bb.dlq.exception.message", self.message),
            ("bb.dlq.exception.stacktrace", self.trace),
            (H_ATTEMPT, str(attempt)),
            (H_FIRST_FAILURE, repr(first_failure_ts or time.time())),
        ]
        if self.cut:
            extra.append((H_TRUNCATED, ",".join(self.cut)))
            extra.append((H_ORIGINAL_SIZE, str(original_size)))
        # A replayed record's replay headers stay (the DLQ entry says where it was replayed from).
        return OutgoingRecord(
            topic=TopicNames.dlq(record.topic),
            key=self.key,
            value=self.value,
            headers=self.headers + tuple((k, v.encode()) for k, v in extra),
            partition=record.partition,
        )


def _shorter_text(f: _Letter) -> _Letter:
    return dataclasses.replace(
        f, trace=f.trace[-_SHORT_TRACE:], message=f.message[:_SHORT_MESSAGE], cut=("stacktrace",)
    )


def _no_value(f: _Letter) -> _Letter:
    return dataclasses.replace(f, value=b"", cut=(*f.cut, "value"))


def _envelope_headers_only(f: _Letter) -> _Letter:
    kept = tuple((k, v) for k, v in f.headers if k in _POINTER_HEADERS)
    return dataclasses.replace(f, headers=kept, cut=(*f.cut, "headers"))


def _no_headers_or_key(f: _Letter) -> _Letter:
    return dataclasses.replace(f, key=None, headers=(), trace="", message="", cut=(*f.cut, "key"))


_CUTS = (_shorter_text, _no_value, _envelope_headers_only, _no_headers_or_key)


@dataclass(frozen=True, slots=True)
class ReplayInfo:
    """What a replayed record's ``bb.replay.*`` headers say."""

    of: str
    """The entry id of the dead letter it was replayed from."""
    agent: str
    attempts: int
    first_failure_ts: float | None
    artifact_id: str = ""
    """The artifact's ``bb.id`` header ('' if the record has none)."""

    @property
    def entry_key(self) -> str:
        """The state key noting that this dead letter's replay was settled (processed or
        dead-lettered again): another copy of the same replay is skipped."""
        return REPLAYED_STATE_PREFIX + self.of

    @property
    def artifact_key(self) -> str | None:
        """The state key noting that the artifact was processed after a replay: a replay of
        any of its dead letters is skipped from then on."""
        return REPLAYED_STATE_PREFIX + self.artifact_id if self.artifact_id else None


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
        artifact_id=(found.get("bb.id") or b"").decode(errors="replace"),
    )
