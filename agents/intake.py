"""Admission: from polled records to the ready queue, and per-key turns.

A polled record is checked against its partition's progress (finished before a restart:
skipped), its replay headers (a replay is only its agent's, once), decoded and validated (or
dead-lettered), keyed by the agent's join or batch, and queued for the scheduling policy.
Ordered agents run one record per key at a time: the others of that key wait, *parked*, until
the turn-holder finishes.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from agents.work import Item, OrderKey, Outcome, RunnerStats
from blackboard.dlq import ReplayInfo, Stage, replay_info
from blackboard.errors import DecodeError, InvalidArtifactError, JoinError
from blackboard.records import OutgoingRecord, Record, StateUpdate, TopicPartition
from blackboard.wire import decode
from scheduler.base import Admission, ReadyQueue
from scheduler.fifo import PlainFifoQueue
from scheduler.joins import completes_join

if TYPE_CHECKING:
    from agents.agent import AgentSpec
    from agents.flow import FlowControl
    from agents.hooks import Hook
    from agents.partitions import Partitions
    from blackboard.blackboard import Blackboard

#: Makes the dead letter of a record: (record, stage, error, attempt, first failure time).
DeadLetterer = Callable[..., OutgoingRecord]


class Intake:
    """Admits one runner's records and keeps their per-key turns.

    Args:
        spec: the agent.
        board: its blackboard (registry, partition count).
        topics: consumed topic → the artifact type name it holds.
        partitions: progress, epochs and keyed state.
        ready: the scheduling policy's ready queue.
        flow: fetch pauses (offset windows, seeks).
        stats: the runner's counters.
        finish: takes an outcome for the next commit.
        dead_letter: makes a record's dead letter.
        now: the event loop's clock.
        admitting: the hooks that may skip a decoded record.
    """

    def __init__(
        self,
        spec: AgentSpec,
        board: Blackboard,
        topics: dict[str, str],
        partitions: Partitions,
        ready: ReadyQueue[Item],
        flow: FlowControl,
        stats: RunnerStats,
        finish: Callable[[Outcome], None],
        dead_letter: DeadLetterer,
        now: Callable[[], float],
        admitting: tuple[Hook, ...] = (),
    ) -> None:
        self.spec = spec
        self.board = board
        self.topics = topics
        self.partitions = partitions
        self.ready = ready
        self.flow = flow
        self.stats = stats
        self.finish = finish
        self.dead_letter = dead_letter
        self.now = now
        self.admitting = admitting
        self.plain = isinstance(ready, PlainFifoQueue)
        self.join_probe = spec.collector is not None and spec.collector.kind == "join"
        self.parked: dict[OrderKey, deque[Item]] = {}
        """Ordered agents: per key whose turn is taken, the records waiting for it."""
        self.running_keys: set[OrderKey] = set()
        self.replaying: set[str] = set()
        """Replayed records admitted and not settled yet (their DLQ entry keys)."""

    # -- admission -----------------------------------------------------------------------
    def admit(self, records: list[Record]) -> None:
        """Queue what a poll returned (dead letters for what no handler may see)."""
        partitions, registry = self.partitions, self.board.registry
        progress, epochs = partitions.progress, partitions.epoch
        topics, collector, ordered = self.topics, self.spec.collector, self.spec.ordered
        plain, admitting = self.plain, self.admitting
        touched: set[TopicPartition] = set()
        polled = time.monotonic()
        tp = TopicPartition("", -1)
        prog = None
        for rec in records:
            if rec.partition != tp.partition or rec.topic != tp.topic:  # runs share a partition
                tp = TopicPartition(rec.topic, rec.partition)
                prog = progress.get(tp)
                if prog is not None:
                    touched.add(tp)
            if prog is None:
                continue
            if not prog.start(rec.offset):
                self.stats.skipped += 1
                continue
            item = Item(rec, tp, epochs[tp], None, None, rec.key, polled)
            if rec.raw_headers:  # a replayed record has bb.replay.* headers
                # Before decoding: a replay is only its agent's to run, even one that fails
                # to decode again (that returns to the DLQ with its history, once).
                replay = replay_info(rec)
                if replay is not None:
                    if not self._admit_replay(replay, rec.partition):
                        self.finish(Outcome(item))  # another agent's, or settled before
                        continue
                    item.replay = replay
            try:
                art = decode(rec, registry)
                if art.envelope.type != topics[rec.topic]:
                    raise DecodeError(
                        f"record {rec.topic}[{rec.partition}]@{rec.offset} says it is a "
                        f"{art.envelope.type}, but the topic holds {topics[rec.topic]}"
                    )
            except DecodeError as exc:
                self.reject(item, "deserialize", exc)
                continue
            except InvalidArtifactError as exc:
                self.reject(item, "validate", exc)
                continue
            item.artifact = art
            if admitting and not all(h.admitting(art.envelope) for h in admitting):
                self.stats.skipped += 1
                self.unclaim_replay(item)
                self.finish(Outcome(item))  # not this agent's to see: done, no handler call
                continue
            if collector is not None:
                try:
                    item.key = collector.order_key(art)
                    collector.check_partition(item.key, rec, self.board.settings.partitions)
                except JoinError as exc:
                    self.reject(item, "join", exc)
                    continue
                except Exception as exc:  # the agent's key function failed on this artifact
                    self.reject(item, "process", exc)
                    continue
            if ordered:
                parked = self.parked.get(item.key)
                if parked is not None:
                    parked.append(item)
                    continue
                self.parked[item.key] = deque()
            if plain:
                self.ready.push(item, None, 0.0)  # type: ignore[arg-type]
            else:
                self.queue(item)
        self.flow.check_windows(touched, progress)

    def skip_ahead(self, positions: dict[TopicPartition, int]) -> None:
        """Move partitions past what the store's log holds beyond their records (Kafka's
        transaction markers), as the last poll saw it; a partition with nothing in flight
        that moved gets an offsets-only commit, so a drained group's lag reaches 0."""
        progress, epochs = self.partitions.progress, self.partitions.epoch
        for tp, position in positions.items():
            prog = progress.get(tp)
            if prog is None or self.flow.seeking(tp):  # rewound while that poll ran
                continue
            if prog.skip_to(position) and not prog.in_flight:
                self.finish(Outcome(None, epochs={tp: epochs[tp]}))

    def _admit_replay(self, replay: ReplayInfo, partition: int) -> bool:
        """Whether a record replayed from a DLQ is this agent's to run: it was dead-lettered
        by this agent (other agents reading the topic processed it already), this replay was
        not settled before, and the artifact was not processed after another replay (replays
        never duplicate)."""
        if replay.agent != self.spec.name:
            self.stats.skipped += 1
            return False
        settled = self.partitions.state.get(partition, {})
        key, done = replay.entry_key, replay.artifact_key
        if key in self.replaying or key in settled or (done is not None and done in settled):
            self.stats.skipped += 1
            return False
        self.replaying.add(key)
        return True

    def unclaim_replay(self, item: Item) -> None:
        """A replayed record left before it ran: it is admitted again when read again."""
        if item.replay is not None:
            self.replaying.discard(item.replay.entry_key)

    def settle_replay(self, item: Item, outcome: Outcome | None) -> None:
        """A replayed record finished (processed or dead-lettered again): note the replay in
        the partition's state, committed with its offset, so another copy of it is skipped;
        processed, note the artifact too, so a replay of any of its dead letters is."""
        replay = item.replay
        assert replay is not None
        self.replaying.discard(replay.entry_key)
        if outcome is None:
            return  # left unfinished: read (and admitted) again later
        partition = item.record.partition
        keys = [replay.entry_key]
        if outcome.dead_letter is None and replay.artifact_key is not None:
            keys.append(replay.artifact_key)
        base = self.partitions.state.get(partition)
        for key in keys:
            outcome.add_state(StateUpdate(partition, key, b"1"))
            if base is not None and self.partitions.settles(outcome):
                base[key] = b"1"

    def reject(self, item: Item, stage: Stage, exc: Exception) -> None:
        """Dead-letter a record no handler may see (it does not decode, validate or key); a
        replayed one keeps its attempts and first failure, and its replay is settled."""
        replay = item.replay
        outcome = Outcome(
            item,
            dead_letter=self.dead_letter(
                item.record,
                stage,
                exc,
                attempt=replay.attempts + 1 if replay is not None else 1,
                first_failure_ts=replay.first_failure_ts if replay is not None else None,
            ),
        )
        if replay is not None:
            self.settle_replay(item, outcome)
        self.finish(outcome)

    # -- the ready queue and per-key turns -----------------------------------------------
    def queue(self, item: Item) -> None:
        """Put an admitted record in the policy's ready queue."""
        if self.plain:  # nothing to tell a plain fifo queue
            self.ready.push(item, None, 0.0)  # type: ignore[arg-type]
            return
        art = item.artifact
        assert art is not None
        env = art.envelope
        completes = False
        if self.join_probe and isinstance(item.key, str):
            assert self.spec.collector is not None
            completes = completes_join(
                self.spec.collector.wanted,
                self.partitions.state.get(item.record.partition, {}),
                item.key,
                env.type,
            )
        item.info = Admission(
            self.spec.name, env.correlation_id, env.tenant, env.type, art.payload, completes
        )
        self.ready.push(item, item.info, self.now())

    def done_with(self, item: Item, service_s: float | None) -> None:
        """Tell the policy a record it released is done (its service time, if it ran)."""
        if item.info is not None and item.decision is not None:
            self.ready.finished(item.info, item.decision, service_s)

    def release_key(self, item: Item) -> None:
        """``item`` finished or left: the next record of its key may go (ordered agents)."""
        if self.spec.ordered:
            self.release(item.key)

    def release(self, key: OrderKey) -> None:
        """The holder of ``key`` finished: the next record parked behind it becomes ready."""
        self.running_keys.discard(key)
        parked = self.parked.get(key)
        if parked:
            self.queue(parked.popleft())
        else:
            self.parked.pop(key, None)

    def hold_key(self, key: OrderKey) -> bool:
        """Take ``key``'s turn for a timer, as a running record would (False: it is busy)."""
        if key in self.running_keys or key in self.parked:
            return False
        self.running_keys.add(key)
        self.parked[key] = deque()
        return True

    def drop_queued(self, gone: set[TopicPartition]) -> None:
        """Drop queued and parked records of ``gone`` partitions, and free the keys whose
        turn-holder was dropped (ordered agents), so later records of those keys still run."""
        for item in [i for i in self.ready if i.tp in gone]:
            self.unclaim_replay(item)
        for parked in self.parked.values():
            for item in parked:
                if item.tp in gone:
                    self.unclaim_replay(item)
        self.ready.drop(lambda i: i.tp in gone)
        if not self.spec.ordered:
            return
        holding = {i.key for i in self.ready} | self.running_keys
        for key in list(self.parked):
            queue = deque(i for i in self.parked[key] if i.tp not in gone)
            if key in holding:
                self.parked[key] = queue
            elif queue:
                self.queue(queue.popleft())
                self.parked[key] = queue
            else:
                del self.parked[key]
