"""A consumer-group member on Redis Streams (docs/DESIGN.md §3, §4).

Redis has no group coordinator, so the member runs the group protocol itself:

- **Session** (:mod:`blackboard.stores.redis.session`): registration under its slot,
  heartbeats, expulsion of members whose session ran out, slot takeovers, wake-ups by pub/sub.
- **Assignment** (:mod:`blackboard.stores.redis.group`): every member range-assigns the
  partitions over the live members, inside :meth:`poll`.
- **Leases** (:mod:`blackboard.stores.redis.scripts`): each partition has a lease
  ``<epoch>|<slot>|<token>``. A member gives up a partition that should move after the runner's
  ``on_revoked`` commit; the new owner takes the lease only once it is free or its holder is
  gone, then ``on_assigned``. A member whose lease changed reports ``on_lost``; its reads and
  commits are refused.
- **Reading**: ``XREADGROUP`` in the Redis consumer group named after the group, one per
  partition stream, inside a script that first checks the lease. On taking a partition the
  member claims every entry pending on earlier owners (``XAUTOCLAIM``), reads its pending
  entries again from the committed offset (``XREADGROUP`` with an ID), then new ones (``>``);
  :meth:`seek` does the same from the offset given. Delivery counts of entries read again
  (``XPENDING``) are kept per record: :meth:`attempt`.
- **Commit** (:mod:`blackboard.stores.redis.commit`): ``WATCH`` the leases, one
  ``MULTI``/``EXEC``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from redis.exceptions import RedisError, ResponseError, WatchError

from blackboard.errors import (
    CommitError,
    ConfigError,
    FencedError,
    SupersededError,
)
from blackboard.logs import get_logger
from blackboard.records import AtomicCommit, CommittedOffset, Record, TopicPartition
from blackboard.store import GroupMember, RebalanceListener
from blackboard.stores.redis import scripts
from blackboard.stores.redis.commit import execute_commit, plan_commit, state_writes
from blackboard.stores.redis.entries import after, offset_of, record_from, text
from blackboard.stores.redis.errors import translate, unavailable
from blackboard.stores.redis.group import GroupView, lease_epoch
from blackboard.stores.redis.session import GroupSession, Warnings
from blackboard.stores.redis.settings import offset_field
from blackboard.stores.redis.store import parse_committed, resolve_partition

if TYPE_CHECKING:
    from blackboard.stores.redis.store import RedisStore

T = TypeVar("T")
log = get_logger("redis")

#: Times a commit is tried again when a watched lease key was written meanwhile without
#: changing hands (rare: another member's take that then failed to prepare, and was undone).
WATCH_RETRIES = 10
#: How often a member that could not take every partition it should own tries again, besides
#: the group channel telling it a lease was freed.
TAKE_RETRY_S = 0.2
#: Pending entries moved per XAUTOCLAIM call.
CLAIM_BATCH = 1000


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
        self._settings = store.settings
        self._keys = store.keys
        self._gk = store.keys.group(group)
        self._listener = listener
        self._redis = store.async_client()
        self._warnings = Warnings(group)
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
        self._take_script = self._redis.register_script(scripts.TAKE)
        self._release_script = self._redis.register_script(scripts.RELEASE)
        self._read_script = self._redis.register_script(scripts.READ)
        self._claim_script = self._redis.register_script(scripts.CLAIM)
        self._trim_script = self._redis.register_script(scripts.TRIM)
        self._partitions: dict[str, int] = {}
        # Per owned partition: its lease value, where reading goes on ('>' or an entry ID), the
        # floor below which every entry is acknowledged, and delivery counts above 1. Entries
        # finished above the committed offset stay pending until it passes them, so a new
        # owner reads them again (and skips them, as the metadata says) as on Kafka.
        self._leases: dict[TopicPartition, str] = {}
        self._cursor: dict[TopicPartition, str] = {}
        self._floor: dict[TopicPartition, int] = {}
        self._attempts: dict[TopicPartition, dict[int, int]] = {}
        self._paused: set[TopicPartition] = set()
        self._lost: set[TopicPartition] = set()
        self._to_release: dict[TopicPartition, str] = {}
        self._sync_due = True
        self._incomplete = False
        self._last_sync = 0.0
        self._next_trim = time.monotonic() + self._settings.trim_interval_s
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
                await self._session.leave({**self._to_release, **self._leases})
            except RedisError as exc:  # our session ends on its own; the others move on then
                log.warning("leaving the group failed", group=self.group, error=str(exc))
        for tp in list(self._leases):
            self._forget(tp)
        self._to_release.clear()
        await self._redis.aclose()

    # -- session callbacks ----------------------------------------------------------------
    def _changed(self) -> None:
        self._sync_due = True
        self._signal()

    def _appended(self, tp: TopicPartition) -> None:
        if tp in self._leases and tp not in self._paused:
            self._signal()

    async def _tick(self) -> None:
        """After each heartbeat: trim the owned streams when ``trim_interval_s`` is due."""
        interval = self._settings.trim_interval_s
        if not interval or time.monotonic() < self._next_trim:
            return
        self._next_trim = time.monotonic() + interval
        for tp in sorted(self._leases):
            try:
                removed = await self._trim_script(
                    keys=[self._keys.stream(tp)], args=[self._keys.prefix]
                )
            except RedisError as exc:
                self._warnings.failed("trim", exc)
                return
            if removed:
                log.info("stream trimmed", partition=_name(tp), removed=int(removed))

    # -- polling --------------------------------------------------------------------------
    async def poll(self, max_records: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            if self._closed:
                return []
            self._wake.clear()
            failed = False
            try:
                if self._needs_sync():
                    await self._sync()
                superseded = self._superseded_error()
                if superseded is not None:  # after on_lost: the runner stops, idle or not
                    raise superseded
                records = await self._read(max_records) if max_records > 0 else []
                self._warnings.worked("poll")
            except RedisError as exc:
                self._warnings.failed("poll", exc)
                self._sync_due = failed = True
                records = []
            if records or self._interrupted:
                self._interrupted = False
                return records
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if failed:  # the server is away: do not spin on it
                remaining = min(remaining, 0.2)
            elif self._incomplete:
                remaining = min(remaining, TAKE_RETRY_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    def _needs_sync(self) -> bool:
        return (
            self._sync_due
            or bool(self._lost)
            or (self._incomplete and time.monotonic() - self._last_sync >= TAKE_RETRY_S)
        )

    async def _sync(self) -> None:
        """Report lost partitions, give up those that should move, take those that should be
        ours (the rebalance callbacks run here, inside poll)."""
        self._sync_due = False
        self._last_sync = time.monotonic()
        session = self._session
        if session.superseded or session.expelled:
            for tp in list(self._leases):  # the leases are not ours to free any more
                self._lose(tp)
            self._to_release.clear()
            await self._report_lost()
            if not session.superseded:
                await session.join(rejoin=True)
            if session.superseded:
                return
        await self._check_leases()
        await self._report_lost()
        if self._to_release:
            await self._release(dict(self._to_release))
        view = await self._view()
        if self.slot not in view.subscriptions:
            return  # our session is running out: the heartbeat finds out and rejoins
        target = view.assignment()
        revoke = sorted(tp for tp in self._leases if target.get(tp) != self.slot)
        if revoke:
            await self._listener.on_revoked(revoke)
            leases = {tp: self._leases[tp] for tp in revoke if tp in self._leases}
            for tp in revoke:
                self._forget(tp)
            self._to_release.update(leases)
            await self._release(leases)
        take = sorted(
            tp for tp, slot in target.items() if slot == self.slot and tp not in self._leases
        )
        taken = [tp for tp in take if await self._take(tp)]
        self._incomplete = len(taken) < len(take)
        if taken:
            await self._listener.on_assigned(taken)

    async def _check_leases(self) -> None:
        owned = sorted(self._leases)
        if not owned:
            return
        values = await self._redis.mget([self._gk.lease(tp) for tp in owned])
        for tp, value in zip(owned, values, strict=True):
            if tp in self._leases and (value is None or text(value) != self._leases[tp]):
                self._lose(tp)

    async def _report_lost(self) -> None:
        if self._lost:
            lost = sorted(self._lost)
            self._lost.clear()
            log.warning("partitions lost", group=self.group, partitions=[_name(t) for t in lost])
            await self._listener.on_lost(lost)

    async def _release(self, leases: dict[TopicPartition, str]) -> None:
        if not leases:
            return
        await self._release_script(
            keys=[self._gk.lease(tp) for tp in leases],
            args=[self._gk.channel, *leases.values()],
        )
        for tp in leases:
            self._to_release.pop(tp, None)

    async def _view(self) -> GroupView:
        gk = self._gk
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrange(gk.members, 0, -1, withscores=True)
            pipe.hgetall(gk.subs)
            pipe.time()
            members, subs, (sec, usec) = await pipe.execute()
        topics = {t for raw in subs.values() for t in json.loads(raw)}
        counts = await self._partition_counts(topics)
        return GroupView.parse(members, subs, sec * 1000 + usec // 1000, counts)

    async def _partition_counts(self, topics: Iterable[str]) -> dict[str, int]:
        wanted = sorted(set(topics))
        missing = [t for t in wanted if t not in self._partitions]
        if missing:
            found = await self._redis.hmget(self._keys.topics, missing)
            for topic, raw in zip(missing, found, strict=True):
                if raw is not None:
                    self._partitions[topic] = int(raw)
        return {t: self._partitions[t] for t in wanted if t in self._partitions}

    async def _take(self, tp: TopicPartition) -> bool:
        """Take the partition's lease if it is free; claim what earlier owners left pending and
        read from the committed offset."""
        gk = self._gk
        raw = await self._take_script(
            keys=[gk.lease(tp), gk.members, gk.tokens], args=[self.slot, self._session.token]
        )
        if raw is None:
            return False
        lease = text(raw)
        try:
            committed, claimed = await self._prepare(tp)
        except BaseException:
            self._to_release[tp] = lease  # free it at the next sync rather than hold it idle
            raise
        self._leases[tp] = lease
        self._cursor[tp] = after(committed)
        self._floor[tp] = committed
        log.info(
            "partition taken",
            group=self.group,
            partition=_name(tp),
            epoch=lease_epoch(lease),
            committed=committed,
            claimed=claimed,
        )
        return True

    async def _prepare(self, tp: TopicPartition) -> tuple[int, int]:
        """Make sure the Redis group exists, claim every pending entry of the partition and
        acknowledge those below the committed offset. Returns the committed offset and how many
        claimed entries are at or above it."""
        stream = self._keys.stream(tp)
        done = parse_committed(await self._redis.hget(self._gk.offsets, offset_field(tp)))
        committed = done.offset if done is not None else 0
        try:
            await self._redis.xgroup_create(stream, self.group, id=after(committed), mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        claimed = await self._claim_script(keys=[stream], args=[self.group, self.slot, CLAIM_BATCH])
        done_ids = [i for i in claimed if offset_of(i) < committed]
        if done_ids:  # committed by an earlier owner whose acknowledgement was lost
            await self._redis.xack(stream, self.group, *done_ids)
        return committed, len(claimed) - len(done_ids)

    async def _read(self, max_records: int) -> list[Record]:
        owned = sorted(tp for tp in self._leases if tp not in self._paused)
        if not owned:
            return []
        start = self._rotation % len(owned)
        self._rotation += 1
        tps = owned[start:] + owned[:start]
        keys: list[str] = []
        args: list[str | int] = [self.group, self.slot, max_records]
        for tp in tps:
            keys += [self._gk.lease(tp), self._keys.stream(tp)]
            args += [self._leases[tp], self._cursor[tp]]
        replies = await self._read_script(keys=keys, args=args)
        records: list[Record] = []
        for tp, reply in zip(tps, replies, strict=True):
            status = int(reply[0])
            if status == 0:
                self._lose(tp)
            elif status == 2:  # the stream or its Redis group vanished: take it anew
                log.warning("reading failed", partition=_name(tp), error=text(reply[1]))
                self._lose(tp)
            elif len(reply) > 1:
                records += await self._accept(tp, reply[1], reply[2], reply[3])
        return records

    async def _accept(
        self, tp: TopicPartition, entries: list[Any], counts: list[Any], cursor: bytes
    ) -> list[Record]:
        self._cursor[tp] = text(cursor)
        floor = self._floor[tp]
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
        if not self._session.superseded:
            return None
        return SupersededError(
            f"worker slot {self.slot} of {self.group} was taken over", code="SUPERSEDED"
        )

    async def _commit(self, commit: AtomicCommit) -> None:
        """One ``WATCH``/``MULTI``/``EXEC`` (:mod:`blackboard.stores.redis.commit`).

        Raises:
            SupersededError: the leases moved because a newer process took over the slot.
            FencedError: the member does not own a partition it commits offsets or state for.
            TopicError: nothing was sent.
            CommitError: nothing was committed (Redis out of memory: code ``OOM``), or the
                connection broke during ``EXEC`` (the committed offsets say whether it ran).
        """
        leases = self._leases_of(commit)
        records = list(itertools.chain(commit.outputs, commit.dead_letters))
        try:
            counts = await self._partition_counts(r.topic for r in records)
        except RedisError as exc:
            raise translate(exc, "commit", in_commit=True) from exc
        floor = self._floor
        plan = plan_commit(
            self._keys,
            self.group,
            [(resolve_partition(rec, counts.get(rec.topic)), rec) for rec in records],
            # From the floor up to the committed offset.
            {tp: (floor.get(tp, done.offset), done.offset) for tp, done in commit.offsets.items()},
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

    def _leases_of(self, commit: AtomicCommit) -> dict[TopicPartition, str]:
        """The leases a commit depends on (offsets' partitions; for state, a partition of the
        same number).

        Raises:
            FencedError: the member does not own one of them.
        """
        leases: dict[TopicPartition, str] = {}
        for tp in commit.offsets:
            lease = self._leases.get(tp)
            if lease is None:
                raise FencedError(
                    f"{self.member_id} does not own {_name(tp)} in group {self.group}",
                    code="FENCED",
                )
            leases[tp] = lease
        for update in commit.state:
            holder = next(
                (tp for tp in sorted(self._leases) if tp.partition == update.partition), None
            )
            if holder is None:
                raise FencedError(
                    f"{self.member_id} does not own state partition {update.partition} of "
                    f"{self.group}",
                    code="FENCED",
                )
            leases[holder] = self._leases[holder]
        return leases

    async def _fenced(self, moved: list[TopicPartition]) -> None:
        """Raise the error for a commit whose leases moved on (and mark the partitions lost)."""
        for tp in moved:
            self._lose(tp)
        self._signal()
        if await self._session.slot_taken():
            raise SupersededError(
                f"worker slot {self.slot} of {self.group} was taken over by a newer process",
                code="SUPERSEDED",
            )
        raise FencedError(
            f"{self.member_id} lost {', '.join(_name(tp) for tp in moved)} in group "
            f"{self.group} (its lease moved on)",
            code="FENCED",
        )

    def _after_commit(self, commit: AtomicCommit) -> None:
        for tp, done in commit.offsets.items():
            if tp not in self._leases:
                continue
            self._floor[tp] = max(self._floor.get(tp, 0), done.offset)
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
        return frozenset(self._leases)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` again from ``offset``: the member's pending entries from there on, then
        new ones. (Entries acknowledged by a commit are not read again.)"""
        if tp in self._leases:
            self._cursor[tp] = after(max(0, offset))
            self._floor[tp] = min(self._floor.get(tp, offset), max(0, offset))
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

    def _forget(self, tp: TopicPartition) -> None:
        self._leases.pop(tp, None)
        self._cursor.pop(tp, None)
        self._floor.pop(tp, None)
        self._attempts.pop(tp, None)
        self._paused.discard(tp)

    def _lose(self, tp: TopicPartition) -> None:
        if tp in self._leases:
            self._forget(tp)
            self._lost.add(tp)
            self._sync_due = True


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"
