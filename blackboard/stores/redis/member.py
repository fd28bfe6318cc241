"""A consumer-group member on Redis Streams (docs/DESIGN.md §3, §4).

Redis has no group coordinator, so the member runs the group protocol itself, with its session
(:mod:`~blackboard.stores.redis.session`: registration under its slot, heartbeats, slot
takeovers, pub/sub wake-ups) and its partition leases (:mod:`~blackboard.stores.redis.ownership`:
the sync inside :meth:`poll` that moves them and runs the rebalance callbacks).

- **Reading**: ``XREADGROUP`` in the Redis consumer group named after the group, one per
  partition stream, inside a script that first checks the lease: a newly taken partition's
  pending entries again from the committed offset (``XREADGROUP`` with an ID), then new ones
  (``>``); :meth:`seek` does the same from the offset given. Delivery counts of entries read
  again (``XPENDING``) are kept per record: :meth:`attempt`.
- **Commit** (:mod:`~blackboard.stores.redis.commit`): ``WATCH`` the leases, one
  ``MULTI``/``EXEC``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from redis.exceptions import RedisError, WatchError

from blackboard.errors import CommitError, ConfigError, FencedError, SupersededError
from blackboard.logs import get_logger
from blackboard.records import AtomicCommit, CommittedOffset, Record, TopicPartition
from blackboard.store import GroupMember, RebalanceListener
from blackboard.stores.redis import scripts
from blackboard.stores.redis.commit import execute_commit, plan_commit, state_writes
from blackboard.stores.redis.entries import offset_of, record_from, text
from blackboard.stores.redis.errors import translate, unavailable
from blackboard.stores.redis.ownership import TAKE_RETRY_S, Ownership, partition_name
from blackboard.stores.redis.session import GroupSession, Warnings
from blackboard.stores.redis.settings import offset_field
from blackboard.stores.redis.store import parse_committed, resolve_partition
from blackboard.stores.redis.trim import Trimmer

if TYPE_CHECKING:
    from blackboard.stores.redis.store import RedisStore

T = TypeVar("T")
log = get_logger("redis")

#: Times a commit is tried again when a watched lease key was written meanwhile without
#: changing hands (rare: another member's take that then failed to prepare, and was undone).
WATCH_RETRIES = 10


class RedisMember(GroupMember):
    """One member of a consumer group on Redis (one agent in one worker process).

    Args:
        store: the store.
        group: the consumer group.
        topics: the topics to read.
        listener: told about partitions assigned, revoked and lost, inside :meth:`poll`.
        slot: the worker slot; a later process joining with the same slot takes over from
            this one. Empty: a slot of its own.

    Raises:
        ConfigError: the slot contains ``|``.
    """

    def __init__(
        self,
        store: RedisStore,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        slot: str = "",
    ) -> None:
        if "|" in slot:
            raise ConfigError(f"worker slot {slot!r} must not contain '|'")
        self.slot = slot or f"anon-{GroupSession.new_token()[:12]}"
        super().__init__(group, f"{group}.{self.slot}", max_record_bytes=store.max_record_bytes)
        self._keys = store.keys
        self._gk = store.keys.group(group)
        self._redis = store.async_client()
        self._warnings = warnings = Warnings(group)
        self._session = GroupSession(
            self._redis,
            store.keys,
            group,
            self.slot,
            tuple(sorted(set(topics))),
            store.settings,
            changed=self._changed,
            appended=self._appended,
            tick=self._tick,
            warnings=self._warnings,
        )
        self._owned = Ownership(
            self._redis,
            store.keys,
            self._session,
            listener,
            member_id=self.member_id,
            forgotten=self._forgotten,
        )
        self._read_script = self._redis.register_script(scripts.READ)
        self._trimmer = Trimmer(self._redis, store.keys, store.settings.trim_interval_s, warnings)
        # Per owned partition, delivery counts above 1 (offset -> count).
        self._attempts: dict[TopicPartition, dict[int, int]] = {}
        self._paused: set[TopicPartition] = set()
        self._interrupted = False
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rotation = 0

    # -- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Join the group and start heartbeating.

        Raises:
            StoreUnavailableError: Redis cannot be reached.
        """
        self._loop = asyncio.get_running_loop()
        try:
            await self._session.join()
        except RedisError as exc:
            await self._redis.aclose()
            raise translate(exc, f"join group {self.group}") from exc
        self._session.start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._signal()
        await self._session.stop()
        if not self._session.superseded:
            try:
                await self._session.leave(self._owned.held())
            except RedisError as exc:  # our session ends on its own; the others move on then
                log.warning("leaving the group failed", group=self.group, error=str(exc))
        self._owned.drop_all()
        await self._redis.aclose()

    # -- session callbacks ----------------------------------------------------------------
    def _changed(self) -> None:
        self._owned.request_sync()
        self._signal()

    def _appended(self, tp: TopicPartition) -> None:
        if tp in self._owned.leases and tp not in self._paused:
            self._signal()

    async def _tick(self) -> None:
        """After each heartbeat: trim the owned streams when ``trim_interval_s`` is due."""
        await self._trimmer.tick(self._owned.leases)

    # -- polling --------------------------------------------------------------------------
    async def poll(self, max_records: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            if self._closed:
                return []
            self._wake.clear()
            failed = False
            try:
                if self._owned.needs_sync():
                    await self._owned.sync()
                superseded = self._superseded_error()
                if superseded is not None:  # after on_lost: the runner stops, idle or not
                    raise superseded
                records = await self._read(max_records) if max_records > 0 else []
                self._warnings.worked("poll")
            except RedisError as exc:
                self._warnings.failed("poll", exc)
                self._owned.request_sync()
                failed = True
                records = []
            if records or self._interrupted:
                self._interrupted = False
                return records
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if failed:  # the server is away: do not spin on it
                remaining = min(remaining, 0.2)
            elif self._owned.incomplete:
                remaining = min(remaining, TAKE_RETRY_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def _read(self, max_records: int) -> list[Record]:
        leases = self._owned.leases
        owned = sorted(tp for tp in leases if tp not in self._paused)
        if not owned:
            return []
        start = self._rotation % len(owned)
        self._rotation += 1
        tps = owned[start:] + owned[:start]
        keys: list[str] = []
        args: list[str | int] = [self.group, self.slot, max_records]
        for tp in tps:
            keys += [self._gk.lease(tp), self._keys.stream(tp)]
            args += [leases[tp], self._owned.cursor(tp)]
        replies = await self._read_script(keys=keys, args=args)
        records: list[Record] = []
        for tp, reply in zip(tps, replies, strict=True):
            status = int(reply[0])
            if status == 0:
                self._owned.lose(tp)
            elif status == 2:  # the stream or its Redis group vanished: take it anew
                log.warning("reading failed", partition=partition_name(tp), error=text(reply[1]))
                self._owned.lose(tp)
            elif len(reply) > 1:
                records += await self._accept(tp, reply[1], reply[2], reply[3])
        return records

    async def _accept(
        self, tp: TopicPartition, entries: list[Any], counts: list[Any], cursor: bytes
    ) -> list[Record]:
        self._owned.move_cursor(tp, text(cursor))
        floor = self._owned.floor(tp)
        delivered = dict(zip(counts[::2], counts[1::2], strict=True)) if counts else {}
        out: list[Record] = []
        below: list[bytes] = []
        for raw_id, fields in entries:
            if fields is None:  # trimmed while pending: nothing to process
                continue
            offset = offset_of(raw_id)
            if offset < floor:  # committed already (the group's position was behind)
                below.append(raw_id)
                continue
            times = int(delivered.get(raw_id, 1))
            if times > 1:
                self._attempts.setdefault(tp, {})[offset] = times
            out.append(record_from(tp.topic, tp.partition, raw_id, fields))
        if below:
            await self._redis.xack(self._keys.stream(tp), self.group, *below)
        return out

    def attempt(self, record: Record) -> int:
        """How many times ``record`` was delivered to the group (1 for the first time; more
        after a crash, a takeover or a rewind), from Redis' delivery counts."""
        return self._attempts.get(record.tp, {}).get(record.offset, 1)

    # -- commits --------------------------------------------------------------------------
    def _superseded_error(self) -> SupersededError | None:
        return self._session.superseded_error()

    async def _commit(self, commit: AtomicCommit) -> None:
        """One ``WATCH``/``MULTI``/``EXEC`` (:mod:`blackboard.stores.redis.commit`).

        Raises:
            SupersededError: the leases moved because a newer process took over the slot.
            FencedError: the member does not own a partition it commits offsets or state for.
            TopicError: nothing was sent.
            CommitError: nothing was committed (Redis out of memory: code ``OOM``), or the
                connection broke during ``EXEC`` (the committed offsets say whether it ran).
        """
        leases = self._owned.leases_for(commit)
        records = list(itertools.chain(commit.outputs, commit.dead_letters))
        try:
            counts = await self._owned.partition_counts(r.topic for r in records)
        except RedisError as exc:
            raise translate(exc, "commit", in_commit=True) from exc
        floor = self._owned.floor_or
        plan = plan_commit(
            self._keys,
            self.group,
            [(resolve_partition(rec, counts.get(rec.topic)), rec) for rec in records],
            # From the floor up to the committed offset.
            {tp: (floor(tp, done.offset), done.offset) for tp, done in commit.offsets.items()},
            int(time.time() * 1000),
            offsets=commit.offsets,
            state=state_writes(commit),
            leases=leases,
        )
        for _ in range(WATCH_RETRIES):
            try:
                moved = await execute_commit(self._redis, self._keys, self._gk, plan)
                if moved:
                    await self._fenced(moved)
            except WatchError:
                continue
            except RedisError as exc:
                raise translate(exc, "commit", in_commit=True) from exc
            self._after_commit(commit)
            return
        raise CommitError(
            f"commit of {self.member_id}: leases kept changing", code="WATCH", retriable=True
        )

    async def _fenced(self, moved: list[TopicPartition]) -> None:
        """Raise the error for a commit whose leases moved on (and mark the partitions lost)."""
        for tp in moved:
            self._owned.lose(tp)
        self._signal()
        await self._session.check_slot()
        raise FencedError(
            f"{self.member_id} lost {', '.join(partition_name(tp) for tp in moved)} in group "
            f"{self.group} (its lease moved on)",
            code="FENCED",
        )

    def _after_commit(self, commit: AtomicCommit) -> None:
        for tp, done in commit.offsets.items():
            if tp not in self._owned.leases:
                continue
            self._owned.committed_up_to(tp, done.offset)
            attempts = self._attempts.get(tp)
            if attempts:
                self._attempts[tp] = {o: n for o, n in attempts.items() if o >= done.offset}

    # -- positions and state --------------------------------------------------------------
    async def committed(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, CommittedOffset]:
        wanted = list(partitions)
        if not wanted:
            return {}
        fields = [offset_field(tp) for tp in wanted]
        raw = await self._retrying(
            "committed offsets", lambda: self._redis.hmget(self._gk.offsets, fields)
        )
        out: dict[TopicPartition, CommittedOffset] = {}
        for tp, value in zip(wanted, raw, strict=True):
            done = parse_committed(value)
            if done is not None:
                out[tp] = done
        return out

    async def load_state(self, partition: int) -> dict[str, bytes]:
        key = self._gk.state(partition)
        raw = await self._retrying("state restore", lambda: self._redis.hgetall(key))
        # Replies are bytes: the client does not decode responses.
        return {text(k): cast("bytes", v) for k, v in raw.items()}

    async def _retrying(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()``, retried with capped backoff while Redis cannot be reached (a server
        restarting), until it answers or the member closes."""
        delay = 0.1
        while True:
            try:
                result = await fn()
            except RedisError as exc:
                if not unavailable(exc) or self._closed:
                    raise translate(exc, what) from exc
                self._warnings.failed(what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self._warnings.worked(what)
            return result

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self._owned.leases)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` again from ``offset``: the member's pending entries from there on, then
        new ones. (Entries acknowledged by a commit are not read again.)"""
        if self._owned.rewind(tp, offset):
            self._signal()

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused.update(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused.difference_update(partitions)
        self._signal()

    def wakeup(self) -> None:
        self._interrupted = True
        self._signal()

    # -- helpers --------------------------------------------------------------------------
    def _signal(self) -> None:
        """Wake a waiting poll (thread-safe)."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    def _forgotten(self, tp: TopicPartition) -> None:
        """``tp`` is not owned any more: drop what reading kept for it."""
        self._attempts.pop(tp, None)
        self._paused.discard(tp)
