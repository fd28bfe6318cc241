"""Operating the dead-letter topics (docs/DESIGN.md §5): list, show, replay and purge.

A dead letter stays in its ``<topic>.dlq`` log; what an operator did with it is recorded in the
compacted topic ``<prefix>._dlq_dispositions`` (key: the entry id), so every store keeps the
same record and listings leave out what was replayed or purged. Entry ids are
``<type>:<partition>:<offset>`` of the dead letter.

Replay re-publishes the original key, value and envelope headers to the original topic, with
``bb.dlq.*`` moved to ``bb.replay.*`` (where from, replay id and time, the agent that gave up,
the attempts and first failure so far, how many replays) and a fresh ``traceparent`` (the old
one kept as ``bb.replay.link``). Only the agent that dead-lettered it runs the replayed record
(other agents of the topic processed it already), and that agent notes each replayed artifact
it settles in its state, committed with its offsets: a second replay of the same artifact, by
mistake or after a crash between re-publishing and recording the disposition, is skipped.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from blackboard.dlq import (
    H_REPLAY_AGENT,
    H_REPLAY_ATTEMPTS,
    H_REPLAY_COUNT,
    H_REPLAY_FIRST_FAILURE,
    H_REPLAY_ID,
    H_REPLAY_LINK,
    H_REPLAY_OF,
    H_REPLAY_TS,
    H_TRUNCATED,
)
from blackboard.dlq_entries import (
    DeadLetter,
    DeadLetterFilter,
    Disposition,
    header_int,
    parse_since,
)
from blackboard.errors import ConfigError, StoreError
from blackboard.records import OutgoingRecord, Record, TopicPartition
from blackboard.topics import DLQ_SUFFIX

if TYPE_CHECKING:
    from blackboard.blackboard import Blackboard

_DLQ_PREFIX = "bb.dlq."
_READ_BATCH = 1000


@dataclass(slots=True)
class ReplayReport:
    """What a replay did (or, dry, would do)."""

    replayed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    dry_run: bool = False


class DeadLetters:
    """The dead letters of one blackboard.

    Args:
        board: the blackboard (store and topic names).
    """

    def __init__(self, board: Blackboard) -> None:
        self.board = board

    # -- reading --------------------------------------------------------------------------
    def dlq_topics(self) -> list[str]:
        """Every dead-letter topic of the blackboard."""
        head = self.board.topics.prefix + "."
        return [t for t in self.board.store.list_topics() if t.startswith(head) and _is_dlq(t)]

    def entries(self, selection: DeadLetterFilter | None = None) -> list[DeadLetter]:
        """The dead letters ``selection`` picks, oldest first."""
        selection = selection or DeadLetterFilter()
        dispositions = self.dispositions()
        found: list[DeadLetter] = []
        for topic in self.dlq_topics():
            type_name = self.board.topics.type_of(topic[: -len(DLQ_SUFFIX)]) or topic
            if selection.type is not None and type_name != selection.type:
                continue
            for record in self._read_all(topic):
                entry_id = f"{type_name}:{record.partition}:{record.offset}"
                entry = DeadLetter(
                    entry_id,
                    type_name,
                    record.partition,
                    record.offset,
                    record,
                    dispositions.get(entry_id),
                )
                if selection.matches(entry):
                    found.append(entry)
        found.sort(key=lambda e: (e.failed_at, e.entry_id))
        return found

    def named(
        self, selection: DeadLetterFilter, *, everything: bool, verb: str, all_word: str
    ) -> list[DeadLetter]:
        """The open dead letters an action (``verb``) applies to: those ``selection`` picks,
        which must name something (ids or a filter) unless ``everything`` is asked.

        Raises:
            ConfigError: nothing named, or an id that is not an open dead letter.
        """
        chosen = selection
        narrowed = bool(chosen.ids or chosen.type or chosen.agent or chosen.stage or chosen.since)
        if not narrowed and not everything:
            raise ConfigError(f"name what to {verb}: entry ids, a filter, or {all_word}")
        entries = self.entries(selection)
        if selection.ids:
            found = {e.entry_id for e in entries} | {e.artifact_id for e in entries}
            missing = sorted(selection.ids - found)
            if missing:
                raise ConfigError(f"no open dead letter with id {', '.join(missing)}")
        return entries

    def get(self, ident: str) -> list[DeadLetter]:
        """The dead letters with entry id or artifact id ``ident`` (replayed ones included)."""
        return self.entries(DeadLetterFilter(ids=frozenset({ident}), include_settled=True))

    def dispositions(self) -> dict[str, Disposition]:
        """Entry id → what was done with it."""
        topic = self.board.topics.dlq_dispositions()
        if self.board.store.topic_partitions(topic) is None:
            return {}
        out: dict[str, Disposition] = {}
        for record in self._read_all(topic):
            if record.key is None:
                continue
            if record.value is None:
                out.pop(record.key.decode(), None)
            else:
                out[record.key.decode()] = orjson.loads(record.value)["disposition"]
        return out

    def _read_all(self, topic: str) -> Iterator[Record]:
        store = self.board.store
        for p in range(store.topic_partitions(topic) or 0):
            tp = TopicPartition(topic, p)
            offset = 0
            while True:
                chunk = store.read(tp, offset, _READ_BATCH)
                yield from chunk
                if not chunk:
                    break
                offset = chunk[-1].offset + 1

    # -- acting ---------------------------------------------------------------------------
    def replay(
        self,
        entries: Iterable[DeadLetter],
        *,
        dry_run: bool = False,
        rate: float | None = None,
    ) -> ReplayReport:
        """Re-publish ``entries`` to their original topics, at most ``rate`` per second.

        Entries already replayed or purged are skipped. Each replay is recorded in the
        dispositions topic right after it is published.
        """
        report = ReplayReport(dry_run=dry_run)
        settled = self.dispositions()  # as of now, not as of when ``entries`` were listed
        started = time.monotonic()
        for entry in entries:
            if entry.disposition is not None or entry.entry_id in settled:
                report.skipped.append(entry.entry_id)
                continue
            if not dry_run:
                try:
                    record = self.replay_record(entry)
                except StoreError:
                    report.skipped.append(entry.entry_id)  # a cut dead letter's original is gone
                    continue
                self.board.store.publish([record])
                self._record(entry.entry_id, "replayed")
                if rate:
                    ahead = (len(report.replayed) + 1) / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            report.replayed.append(entry.entry_id)
        return report

    def purge(self, entries: Iterable[DeadLetter]) -> list[str]:
        """Mark ``entries`` purged: they leave listings and can no longer be replayed. (The
        records stay in the DLQ log until its retention removes them.)"""
        purged = []
        settled = self.dispositions()
        for entry in entries:
            if entry.disposition is None and entry.entry_id not in settled:
                self._record(entry.entry_id, "purged")
                purged.append(entry.entry_id)
        return purged

    def replay_record(self, entry: DeadLetter) -> OutgoingRecord:
        """The record a replay of ``entry`` publishes. A dead letter cut to fit the store's
        record limit (``bb.dlq.truncated``) is replayed from its original, read back from the
        original topic.

        Raises:
            StoreError: the original of a cut dead letter is no longer in its topic.
        """
        rec = self._original(entry) if entry.header(H_TRUNCATED) else entry.record
        kept = [
            (k, v)
            for k, v in rec.headers
            if not k.startswith(_DLQ_PREFIX)
            and not k.startswith("bb.replay.")
            and k != "traceparent"
        ]
        old_trace = rec.header("traceparent")
        replay_headers: list[tuple[str, bytes]] = [
            (H_REPLAY_OF, entry.entry_id.encode()),
            (H_REPLAY_ID, uuid.uuid4().hex.encode()),
            (H_REPLAY_TS, repr(time.time()).encode()),
            (H_REPLAY_AGENT, entry.agent.encode()),
            (H_REPLAY_ATTEMPTS, str(entry.attempt).encode()),
            (H_REPLAY_FIRST_FAILURE, entry.header("bb.dlq.first_failure_ts").encode()),
            (H_REPLAY_COUNT, str(entry.replays + 1).encode()),
            ("traceparent", _fresh_traceparent().encode()),
        ]
        if old_trace is not None:
            replay_headers.append((H_REPLAY_LINK, old_trace))
        return OutgoingRecord(
            topic=entry.header("bb.dlq.original.topic"),
            key=rec.key,
            value=rec.value,
            headers=tuple(kept) + tuple(replay_headers),
            partition=header_int(entry.header("bb.dlq.original.partition"), entry.partition),
        )

    def _original(self, entry: DeadLetter) -> Record:
        """The record a cut dead letter was made from, with the dead letter's own headers (so
        its ``bb.dlq.*`` history moves to ``bb.replay.*`` as for any replay)."""
        topic = entry.header("bb.dlq.original.topic")
        offset = header_int(entry.header("bb.dlq.original.offset"), -1)
        tp = TopicPartition(topic, header_int(entry.header("bb.dlq.original.partition"), -1))
        found = self.board.store.read(tp, offset, 1) if offset >= 0 and topic else []
        if not found or found[0].offset != offset:
            raise StoreError(
                f"dead letter {entry.entry_id} was cut to fit and its original "
                f"{topic}[{tp.partition}]@{offset} is gone: it cannot be replayed"
            )
        original = found[0]
        cut = set(entry.header(H_TRUNCATED).split(","))
        headers = entry.record.headers
        if "headers" in cut or "key" in cut:  # the original's own headers, then the history
            own = tuple((k, v) for k, v in original.headers if not k.startswith(_DLQ_PREFIX))
            headers = own + tuple((k, v) for k, v in headers if k.startswith(_DLQ_PREFIX))
        return dataclasses.replace(
            entry.record,
            key=original.key,
            value=original.value,
            raw_headers=headers,
            envelope=None,
        )

    def _record(self, entry_id: str, disposition: Disposition) -> None:
        topic = self.board.topics.dlq_dispositions()
        self.board.store.ensure_topics([topic], 1, compacted=True)
        value = orjson.dumps({"disposition": disposition, "ts": time.time()})
        self.board.store.publish([OutgoingRecord(topic, entry_id.encode(), value, partition=0)])


def replay_backoff_s(entry: DeadLetter, base_s: float, cap_s: float = 3600.0) -> float:
    """How long after its failure an automatic replay of ``entry`` waits: ``base_s`` doubled
    for every earlier replay, capped."""
    return float(min(cap_s, base_s * 2.0**entry.replays))


def _is_dlq(topic: str) -> bool:
    return topic.endswith(DLQ_SUFFIX)


def _fresh_traceparent() -> str:
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


__all__ = [
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetters",
    "ReplayReport",
    "parse_since",
    "replay_backoff_s",
]
