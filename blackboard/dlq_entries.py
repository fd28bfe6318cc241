"""A dead letter as read back from a ``<topic>.dlq`` topic (:class:`DeadLetter`), the filter
that selects entries (:class:`DeadLetterFilter`), and ``--since`` times (:func:`parse_since`)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import orjson

from blackboard.dlq import H_REPLAY_COUNT
from blackboard.errors import ConfigError
from blackboard.records import Record

#: What happened to an entry: replayed to its original topic, or purged.
Disposition = Literal["replayed", "purged"]
_DLQ_PREFIX = "bb.dlq."


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter and why it is there."""

    entry_id: str
    type: str
    partition: int
    offset: int
    record: Record
    disposition: Disposition | None = None

    def header(self, name: str) -> str:
        """A header's text ('' when absent)."""
        value = self.record.header(name)
        return value.decode(errors="replace") if value is not None else ""

    @property
    def artifact_id(self) -> str:
        return self.header("bb.id")

    @property
    def agent(self) -> str:
        return self.header("bb.dlq.agent")

    @property
    def stage(self) -> str:
        return self.header("bb.dlq.stage")

    @property
    def attempt(self) -> int:
        return header_int(self.header("bb.dlq.attempt"), 1)

    @property
    def replays(self) -> int:
        """How many times this artifact was replayed before it landed here."""
        return header_int(self.header(H_REPLAY_COUNT), 0)

    @property
    def failed_at(self) -> float:
        """When the dead letter was written (seconds since the epoch)."""
        return self.record.timestamp

    def summary(self) -> dict[str, object]:
        """The entry as a JSON-ready dict (no payload, no stack trace)."""
        return {
            "id": self.entry_id,
            "artifact_id": self.artifact_id,
            "type": self.type,
            "agent": self.agent,
            "group": self.header("bb.dlq.consumer.group"),
            "stage": self.stage,
            "attempt": self.attempt,
            "replays": self.replays,
            "exception": self.header("bb.dlq.exception.class"),
            "message": self.header("bb.dlq.exception.message"),
            "failed_at": datetime.fromtimestamp(self.failed_at, UTC).isoformat(),
            "first_failure_at": _iso(self.header("bb.dlq.first_failure_ts")),
            "original": {
                "topic": self.header("bb.dlq.original.topic"),
                "partition": header_int(self.header("bb.dlq.original.partition"), -1),
                "offset": header_int(self.header("bb.dlq.original.offset"), -1),
            },
            "disposition": self.disposition,
        }

    def details(self) -> dict[str, object]:
        """Everything: the summary, every header, the payload and the stack trace."""
        value = self.record.value
        try:
            payload: object = orjson.loads(value) if value is not None else None
        except orjson.JSONDecodeError:
            payload = (value or b"").decode(errors="replace")
        return {
            **self.summary(),
            "key": (self.record.key or b"").decode(errors="replace"),
            "headers": {
                k: (v.decode(errors="replace") if v is not None else None)
                for k, v in self.record.headers
                if k != "bb.dlq.exception.stacktrace"
            },
            "payload": payload,
            "stacktrace": self.header("bb.dlq.exception.stacktrace"),
        }


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters an operation applies to (every field optional)."""

    type: str | None = None
    agent: str | None = None
    stage: str | None = None
    since: float | None = None
    ids: frozenset[str] = field(default_factory=frozenset)
    include_settled: bool = False

    def matches(self, entry: DeadLetter) -> bool:
        """Whether ``entry`` is selected."""
        if self.ids and entry.entry_id not in self.ids and entry.artifact_id not in self.ids:
            return False
        if self.type is not None and entry.type != self.type:
            return False
        if self.agent is not None and entry.agent != self.agent:
            return False
        if self.stage is not None and entry.stage != self.stage:
            return False
        if self.since is not None and entry.failed_at < self.since:
            return False
        return self.include_settled or entry.disposition is None


def parse_since(text: str, now: float | None = None) -> float:
    """``--since`` as seconds since the epoch: a duration back from now (``90s``, ``15m``,
    ``2h``, ``1d``) or an ISO 8601 time (UTC unless it says otherwise).

    Raises:
        ConfigError: neither form.
    """
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return (now if now is not None else time.time()) - float(match.group(1)) * unit
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: give a duration like 15m, 2h, 1d or an ISO time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def header_int(text: str, default: int) -> int:
    """A header's integer, or ``default`` if it is empty or not one."""
    try:
        return int(text)
    except ValueError:
        return default


def _iso(ts: str) -> str | None:
    try:
        return datetime.fromtimestamp(float(ts), UTC).isoformat()
    except ValueError:
        return None
