"""A consumer-group member on Redis Streams (DESIGN.md §3, §4).

Redis has no group coordinator, so the member runs the group protocol itself
(:mod:`blackboard.stores.redis_scripts`, :mod:`blackboard.stores.redis_group`):

- **Membership**: a sorted set of slot → session expiry (Redis server time). A heartbeat task
  extends it every ``heartbeat_interval_ms`` and expels members whose session ran out. A
  process that joins with a slot already held takes the slot over (its predecessor is
  *superseded*: its commits fail with :class:`SupersededError`), so a restarted worker slot
  resumes at once instead of waiting for the dead one's session to end.
- **Assignment**: every member range-assigns the partitions over the live members (inside
  :meth:`poll`, on a message on the group's channel or once per heartbeat interval).
- **Leases**: each partition has a lease ``<epoch>|<slot>|<token>``. A member gives up a
  partition it should no longer own after the runner's ``on_revoked`` commit; the new owner
  takes the lease only when it is free or its holder is gone, then ``on_assigned``. A member
  whose lease changed (its session ran out) reports ``on_lost``; its commits are refused.
- **Reading**: ``XREADGROUP`` in the Redis consumer group named after the group, one per
  partition stream, inside a script that first checks the lease. On taking a partition the
  member claims every entry pending on earlier owners (``XAUTOCLAIM``) and reads its pending
  entries again from the committed offset (``XREADGROUP`` with an ID), then new ones (``>``).
  :meth:`seek` does the same from the offset given. Delivery counts of re-read entries
  (``XPENDING``) are kept per record: :meth:`attempt`.
- **Commit**: ``WATCH`` the leases of the partitions committed, check they are still ours,
  then one ``MULTI``/``EXEC``: ``XADD`` outputs and dead letters, ``XACK`` the inputs, write
  the committed offsets and metadata and the state entries, ``PUBLISH`` wake-ups. A lease that
  changed in between aborts the ``EXEC``: a zombie gets nothing visible.
- **Waiting**: a pub/sub connection hears appends to subscribed topics and group changes, so
  a waiting :meth:`poll` wakes at once; without a message it reads again at its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import RedisError, ResponseError, WatchError

from blackboard.errors import (
    CommitError,
    ConfigError,
    FencedError,
    RecordTooLargeError,
    StoreClosedError,
    SupersededError,
)
from blackboard.logs import get_logger
from blackboard.records import AtomicCommit, CommittedOffset, Record, TopicPartition
from blackboard.store import MAX_METADATA_CHARS, GroupMember, RebalanceListener
from blackboard.stores import redis_scripts
from blackboard.stores.redis import (
    check_record_size,
    format_committed,
    parse_committed,
    resolve_partition,
)
from blackboard.stores.redis_entries import (
    after,
    entry_fields,
    entry_id,
    offset_of,
    record_from,
    text,
)
from blackboard.stores.redis_errors import translate, unavailable
from blackboard.stores.redis_group import GroupView, lease_epoch
from blackboard.stores.redis_settings import offset_field

if TYPE_CHECKING:
    from blackboard.stores.redis import RedisStore

T = TypeVar("T")
log = get_logger("redis")

#: Times a commit is tried again when a watched lease key was written meanwhile (by a
#: heartbeat-free write such as a re-take of the same value: rare).
WATCH_RETRIES = 10
#: How often a member that could not take every partition it should own tries again, besides
#: the group channel telling it a lease was freed.
TAKE_RETRY_S = 0.2
#: Pending entries moved per XAUTOCLAIM call.
CLAIM_BATCH = 1000
#: Seconds between two warnings about an unreachable server.
WARN_EVERY_S = 5.0


class RedisMember(GroupMember):
    """One member of a consumer group on Redis (one agent in one worker process)."""

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
        self.group = group
        self.slot = slot or f"anon-{uuid.uuid4().hex[:12]}"
        self.member_id = f"{group}.{self.slot}"
        self._token = uuid.uuid4().hex
        self._store = store
        self._settings = store.settings
        self._keys = store.keys
        self._gk = store.keys.group(group)
        self._topics = tuple(sorted(set(topics)))
        self._listener = listener
        self._redis = store.async_client()
        self._join_script = self._redis.register_script(redis_scripts.JOIN)
        self._heartbeat_script = self._redis.register_script(redis_scripts.HEARTBEAT)
        self._take_script = self._redis.register_script(redis_scripts.TAKE)
        self._release_script = self._redis.register_script(redis_scripts.RELEASE)
        self._leave_script = self._redis.register_script(redis_scripts.LEAVE)
        self._read_script = self._redis.register_script(redis_scripts.READ)
        self._claim_script = self._redis.register_script(redis_scripts.CLAIM)
        self._trim_script = self._redis.register_script(redis_scripts.TRIM)
        self._partitions: dict[str, int] = {}
        # Partitions owned, with their lease value, read cursor, and the floor below which
        # every entry is acknowledged. Entries finished above the committed offset stay pending
        # until it passes them, so a new owner reads them again (and skips them) as on Kafka.
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
        self._expelled = False
        self._superseded = False
        self._interrupted = False
        self._closed = False
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._rotation = 0
        self._warned: dict[str, float] = {}

    # -- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Register in the group and start the heartbeat and listener tasks.

        Raises:
            StoreUnavailableError: Redis cannot be reached.
        """
        self._loop = asyncio.get_running_loop()
        try:
            await self._register()
        except RedisError as exc:
            await self._redis.aclose()
            raise translate(exc, f"join group {self.group}") from exc
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name=f"redis-heartbeat:{self.member_id}"),
            asyncio.create_task(self._listen_loop(), name=f"redis-listen:{self.member_id}"),
        ]

    async def _register(self) -> None:
        gk = self._gk
        previous = await self._join_script(
            keys=[gk.members, gk.tokens, gk.subs, self._keys.groups],
            args=[
                self.slot,
                self._token,
                json.dumps(self._topics),
                self._settings.session_timeout_ms,
                self.group,
                gk.channel,
            ],
        )
        if previous is not None and text(previous) != self._token:
            log.warning(
                "took over the worker slot from an earlier process",
                group=self.group,
                slot=self.slot,
            )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._signal()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self._superseded:
            held = {**self._to_release, **self._leases}
            gk = self._gk
            try:
                await self._leave_script(
                    keys=[gk.members, gk.tokens, gk.subs, *(gk.lease(tp) for tp in held)],
                    args=[self.slot, self._token, gk.channel, *held.values()],
                )
            except RedisError as exc:  # our session ends on its own; the others move on then
                log.warning("leaving the group failed", group=self.group, error=str(exc))
        self._forget_all()
        await self._redis.aclose()

    # -- background tasks -----------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        interval = self._settings.heartbeat_interval_ms / 1000.0
        gk = self._gk
        next_trim = time.monotonic() + self._settings.trim_interval_s
        while not self._closed and not self._superseded:
            await asyncio.sleep(interval)
            try:
                status = await self._heartbeat_script(
                    keys=[gk.members, gk.tokens, gk.subs],
                    args=[self.slot, self._token, self._settings.session_timeout_ms, gk.channel],
                )
            except RedisError as exc:
                self._warn("heartbeat", exc)
                continue
            self._recovered("heartbeat")
            code = int(status[0])
            if code == -1:
                log.error(
                    "a newer process took over this worker slot; giving up its partitions",
                    group=self.group,
                    slot=self.slot,
                )
                self._superseded = True
            elif code == 0:
                log.warning("session ran out; rejoining", group=self.group, slot=self.slot)
                self._expelled = True
            self._sync_due = True
            self._signal()
            if self._settings.trim_interval_s and time.monotonic() >= next_trim:
                next_trim = time.monotonic() + self._settings.trim_interval_s
                await self._trim_owned()

    async def _trim_owned(self) -> None:
        for tp in sorted(self._leases):
            try:
                removed = await self._trim_script(
                    keys=[self._keys.stream(tp)], args=[self._keys.prefix]
                )
            except RedisError as exc:
                self._warn("trim", exc)
                return
            if removed:
                log.info("stream trimmed", partition=_name(tp), removed=int(removed))

    async def _listen_loop(self) -> None:
        data = {self._keys.data_channel(t).encode(): t for t in self._topics}
        channels = [self._gk.channel, self._keys.topics_channel, *(c.decode() for c in data)]
        pubsub: Any = None
        delay = 0.05
        try:
            while not self._closed:
                try:
                    if pubsub is None:
                        pubsub = self._redis.pubsub()
                        await pubsub.subscribe(*channels)
                        self._sync_due = True  # messages may have been missed meanwhile
                        self._signal()
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except RedisError as exc:
                    self._warn("listen", exc)
                    if pubsub is not None:
                        with contextlib.suppress(RedisError):
                            await pubsub.aclose()
                        pubsub = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                delay = 0.05
                if message is None:
                    continue
                topic = data.get(message["channel"])
                if topic is None:
                    self._sync_due = True
                    self._signal()
                    continue
                tp = TopicPartition(topic, int(message["data"]))
                if tp in self._leases and tp not in self._paused:
                    self._signal()
        finally:
            if pubsub is not None:
                with contextlib.suppress(RedisError):
                    await pubsub.aclose()

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
                records = await self._read(max_records) if max_records > 0 else []
                self._recovered("poll")
            except RedisError as exc:
                self._warn("poll", exc)
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
        if self._superseded or self._expelled:
            for tp in list(self._leases):  # the leases are not ours to free any more
                self._lose(tp)
            self._to_release.clear()
            await self._report_lost()
            if self._superseded:
                return
            await self._register()
            self._expelled = False
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
            keys=[gk.lease(tp), gk.members, gk.tokens], args=[self.slot, self._token]
        )
        if raw is None:
            return False
        lease = raw.decode()
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
            elif status == 2:
                log.warning("reading failed", partition=_name(tp), error=_text(reply[1]))
                await self._forget_and_retake(tp)
            elif len(reply) > 1:
                records += await self._accept(tp, reply[1], reply[2], reply[3])
        return records

    async def _accept(
        self, tp: TopicPartition, entries: list[Any], counts: list[Any], cursor: bytes
    ) -> list[Record]:
        self._cursor[tp] = cursor.decode()
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

    async def _forget_and_retake(self, tp: TopicPartition) -> None:
        """The partition's stream or Redis group vanished: tell the runner, take it again."""
        self._lose(tp)
        self._sync_due = True

    def attempt(self, record: Record) -> int:
        """How many times ``record`` was delivered to the group (1 for the first time; more
        after a crash, a takeover or a rewind), from Redis' delivery counts."""
        return self._attempts.get(record.tp, {}).get(record.offset, 1)

    # -- commits --------------------------------------------------------------------------
    async def commit(self, commit: AtomicCommit) -> None:
        if self._closed:
            raise StoreClosedError(f"member {self.member_id} is closed")
        if self._superseded:
            raise SupersededError(
                f"worker slot {self.slot} of {self.group} was taken over", code="SUPERSEDED"
            )
        watched = self._watched(commit)
        for tp, done in commit.offsets.items():
            if len(done.metadata) > MAX_METADATA_CHARS:
                raise RecordTooLargeError(
                    f"offset metadata for {_name(tp)} is {len(done.metadata)} characters, "
                    f"over {MAX_METADATA_CHARS}",
                    code="OFFSET_METADATA_TOO_LARGE",
                )
        records = list(itertools.chain(commit.outputs, commit.dead_letters))
        limit = self._settings.max_record_bytes
        for rec in records:
            check_record_size(rec, limit)
        try:
            counts = await self._partition_counts(r.topic for r in records)
        except RedisError as exc:
            raise translate(exc, "commit", in_commit=True) from exc
        now_ms = int(time.time() * 1000)
        appends = [
            (resolve_partition(rec, counts.get(rec.topic)), entry_fields(rec, now_ms))
            for rec in records
        ]
        acks = {tp: self._acks(tp, done) for tp, done in commit.offsets.items()}
        for _ in range(WATCH_RETRIES):
            try:
                await self._transact(commit, appends, acks, watched)
            except WatchError:
                continue
            except RedisError as exc:
                raise translate(exc, "commit", in_commit=True) from exc
            self._after_commit(commit)
            return
        raise CommitError(
            f"commit of {self.member_id}: leases kept changing", code="WATCH", retriable=True
        )

    def _watched(self, commit: AtomicCommit) -> dict[TopicPartition, str]:
        """The leases a commit depends on (offsets' partitions; for state, a partition of the
        same number).

        Raises:
            FencedError: the member does not own one of them.
        """
        watched: dict[TopicPartition, str] = {}
        for tp in commit.offsets:
            lease = self._leases.get(tp)
            if lease is None:
                raise FencedError(
                    f"{self.member_id} does not own {_name(tp)} in group {self.group}",
                    code="FENCED",
                )
            watched[tp] = lease
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
            watched[holder] = self._leases[holder]
        return watched

    def _acks(self, tp: TopicPartition, done: CommittedOffset) -> list[str]:
        """Entry IDs a commit acknowledges: from the floor up to the committed offset."""
        return [entry_id(o) for o in range(self._floor.get(tp, done.offset), done.offset)]

    async def _transact(
        self,
        commit: AtomicCommit,
        appends: list[tuple[TopicPartition, dict[bytes, bytes]]],
        acks: dict[TopicPartition, list[str]],
        watched: dict[TopicPartition, str],
    ) -> None:
        gk, keys = self._gk, self._keys
        async with self._redis.pipeline(transaction=True) as pipe:
            if watched:
                names = [gk.lease(tp) for tp in watched]
                await pipe.watch(*names)
                current = await pipe.mget(names)
                moved = [
                    tp
                    for tp, value in zip(watched, current, strict=True)
                    if value is None or text(value) != watched[tp]
                ]
                if moved:  # leaving the block unwatches
                    await self._fenced(moved)
            pipe.multi()  # type: ignore[no-untyped-call]
            for tp, fields in appends:
                pipe.xadd(keys.stream(tp), fields, id="0-*")  # type: ignore[arg-type]
            for tp, ids in acks.items():
                if ids:
                    pipe.xack(keys.stream(tp), self.group, *ids)
            if commit.offsets:
                positions = {
                    offset_field(tp): format_committed(c) for tp, c in commit.offsets.items()
                }
                pipe.hset(gk.offsets, mapping=positions)  # type: ignore[arg-type]
            for partition, sets, deletes in _state_writes(commit):
                if sets:
                    pipe.hset(gk.state(partition), mapping=sets)  # type: ignore[arg-type]
                if deletes:
                    pipe.hdel(gk.state(partition), *deletes)
            for tp in sorted({tp for tp, _ in appends}):
                pipe.publish(keys.data_channel(tp.topic), tp.partition)
            await pipe.execute()

    async def _fenced(self, moved: list[TopicPartition]) -> None:
        """Raise the error for a commit whose leases moved on (and mark the partitions lost)."""
        for tp in moved:
            self._lose(tp)
        self._signal()
        holder = await self._redis.hget(self._gk.tokens, self.slot)
        if holder is not None and text(holder) != self._token:
            self._superseded = True
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
        raw = await self._retrying(
            "state restore", lambda: self._redis.hgetall(self._gk.state(partition))
        )
        return {text(k): v for k, v in raw.items()}  # type: ignore[misc]

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
                self._warn(what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self._recovered(what)
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

    def _forget_all(self) -> None:
        for tp in list(self._leases):
            self._forget(tp)
        self._to_release.clear()

    def _lose(self, tp: TopicPartition) -> None:
        if tp in self._leases:
            self._forget(tp)
            self._lost.add(tp)
            self._sync_due = True

    def _warn(self, action: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned.get(action, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned[action] = now
            log.warning(
                "redis call failed; retrying",
                group=self.group,
                action=action,
                error=f"{type(exc).__name__}: {exc}",
            )

    def _recovered(self, action: str) -> None:
        if self._warned.pop(action, None) is not None:
            log.info("redis call works again", group=self.group, action=action)


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


def _text(raw: Any) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def _state_writes(commit: AtomicCommit) -> list[tuple[int, dict[str, bytes], list[str]]]:
    """The commit's state updates per partition, the last write of each key winning."""
    final: dict[int, dict[str, bytes | None]] = {}
    for update in commit.state:
        final.setdefault(update.partition, {})[update.key] = update.value
    out: list[tuple[int, dict[str, bytes], list[str]]] = []
    for partition, entries in sorted(final.items()):
        sets = {k: v for k, v in entries.items() if v is not None}
        deletes = [k for k, v in entries.items() if v is None]
        out.append((partition, sets, deletes))
    return out
