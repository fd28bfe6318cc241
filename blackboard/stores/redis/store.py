"""``redis://host:port/db[?key=value...]`` — Redis Streams, for light deployments.

One stream per topic partition (``<prefix>s:<topic>:<partition>``), so ordering, trimming, lag
and ownership are all per partition, as the processing loop expects. Entries get explicit IDs
``0-1``, ``0-2``, … (:mod:`blackboard.stores.redis.entries`): offsets are dense and entry
``0-(n+1)`` is offset ``n``. A hash holds each topic's partition count. Records are partitioned
by :func:`~blackboard.records.partition_for`, the same function every store uses.

Consumer groups are the store's own protocol on top of Redis consumer groups
(:mod:`~blackboard.stores.redis.member`, :mod:`~blackboard.stores.redis.ownership`): members
heartbeat, every member computes the same range assignment, a lease with a rising epoch per
partition fences zombies, and an atomic commit is one ``WATCH``/``MULTI``/``EXEC``. Everything
``EXEC`` wrote is committed, so :meth:`read` serves every entry and end offsets are the
streams' ``entries-added`` counters.

Needs Redis 7.0 or later (``XADD <ms>-*``, ``entries-added``) and a memory policy that never
evicts keys (``noeviction`` or a ``volatile-*`` policy: the store sets no TTLs).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from blackboard.errors import ConfigError, StoreUnavailableError, TopicError
from blackboard.records import (
    CommittedOffset,
    OutgoingRecord,
    Record,
    TopicPartition,
    partition_for,
)
from blackboard.redact import redact_url
from blackboard.store import GroupMember, LagRow, RebalanceListener, Store, check_record_sizes
from blackboard.stores.redis import scripts
from blackboard.stores.redis.entries import entry_fields, offset_of, record_from, text
from blackboard.stores.redis.errors import translate, unavailable
from blackboard.stores.redis.settings import (
    RedisKeys,
    RedisSettings,
    parse_offset_field,
)

T = TypeVar("T")

#: Records appended per MULTI/EXEC by :meth:`RedisStore.publish`.
PUBLISH_CHUNK = 1000
_MIN_VERSION = (7, 0)


def parse_committed(raw: bytes | str | None) -> CommittedOffset | None:
    """A committed position from its hash value ``<offset>:<metadata>``."""
    if raw is None:
        return None
    offset, _, metadata = text(raw).partition(":")
    return CommittedOffset(int(offset), metadata)


def format_committed(done: CommittedOffset) -> str:
    """The hash value of a committed position."""
    return f"{done.offset}:{done.metadata}"


def resolve_partition(rec: OutgoingRecord, partitions: int | None) -> TopicPartition:
    """The partition ``rec`` goes to, given its topic's partition count (None: missing).

    Raises:
        TopicError: the topic or the partition does not exist.
    """
    if partitions is None:
        raise TopicError(f"topic {rec.topic} does not exist")
    if rec.partition is None:
        return TopicPartition(rec.topic, partition_for(rec.key, partitions))
    if not 0 <= rec.partition < partitions:
        raise TopicError(f"topic {rec.topic} has no partition {rec.partition}")
    return TopicPartition(rec.topic, rec.partition)


@dataclass(frozen=True, slots=True)
class RedisLagRow(LagRow):
    """A lag row with the Redis consumer group's own figures for the partition's stream."""

    delivered: int | None = None
    """Entries the Redis consumer group handed out (``entries-read``; None when unknown)."""
    pending: int = 0
    """Entries handed out and not acknowledged yet (read or finished, not committed)."""


class RedisStore(Store):
    """The Redis Streams backend. Thread-safe (redis-py's connection pool)."""

    system = "redis"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.settings = RedisSettings.from_url(url)
        self.max_record_bytes = self.settings.max_record_bytes
        self.keys = RedisKeys(self.settings.key_prefix)
        try:
            self._client = redis.Redis.from_url(
                self.settings.connection_url, retry=Retry(NoBackoff(), 0), protocol=2
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"bad redis store URL {redact_url(url)!r}: {exc}") from exc
        self._partitions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._trim = self._client.register_script(scripts.TRIM)
        self._check_server()

    def _check_server(self) -> None:
        where = self.settings.address
        try:
            info = self._client.info()
        except RedisError as exc:
            self._client.close()
            raise StoreUnavailableError(
                f"cannot reach Redis at {where}: {exc}", code="CONNECTION", retriable=True
            ) from exc
        version = tuple(int(x) for x in str(info.get("redis_version", "0")).split(".")[:2])
        if version < _MIN_VERSION:
            self._client.close()
            raise ConfigError(
                f"Redis at {where} is version {info.get('redis_version')}; the redis:// store "
                "needs 7.0 or later (dense entry IDs with XADD <ms>-*)"
            )
        policy = str(info.get("maxmemory_policy", "noeviction"))
        if policy.startswith("allkeys-"):
            self._client.close()
            raise ConfigError(
                f"Redis at {where} evicts any key when memory runs out "
                f"(maxmemory-policy {policy}), which would lose records; set noeviction"
            )

    def async_client(self) -> redis.asyncio.Redis:
        """A new asyncio client for a group member (no automatic retries: a retried EXEC
        could apply a commit twice, so the member decides what to retry)."""
        import redis.asyncio

        from blackboard.stores.redis.connection import connection_class

        options: dict[str, Any] = {}
        packing = connection_class()
        if packing is not None:  # rediss:// and unix:// URLs choose their own class
            options["connection_class"] = packing
        return redis.asyncio.Redis.from_url(
            self.settings.connection_url, retry=Retry(NoBackoff(), 0), protocol=2, **options
        )

    def _call(self, action: str, fn: Callable[[], T], *, idempotent: bool = True) -> T:
        """``fn()`` with Redis errors translated; an idempotent call is tried once more when
        the connection broke (a pooled connection from before a server restart)."""
        for attempt in (1, 2):
            try:
                return fn()
            except RedisError as exc:
                if idempotent and attempt == 1 and unavailable(exc):
                    continue
                raise translate(exc, action) from exc
        raise AssertionError("unreachable")

    # -- topics ---------------------------------------------------------------------------
    def create_topics(
        self, topics: Sequence[str], partitions: int, *, compacted: bool = False
    ) -> None:
        """Record the topics' partition counts (``compacted`` changes nothing here: group state
        lives in hashes, not in changelog streams). Streams appear with their first entry."""
        if partitions < 1:
            raise TopicError(f"a topic needs at least one partition, got {partitions}")
        if not topics:
            return

        def create() -> list[Any]:
            with self._client.pipeline(transaction=True) as pipe:
                for topic in topics:
                    pipe.hsetnx(self.keys.topics, topic, partitions)
                pipe.publish(self.keys.topics_channel, "created")
                return pipe.execute()

        self._call("create topics", create)

    def topic_partitions(self, topic: str) -> int | None:
        with self._lock:
            if topic in self._partitions:
                return self._partitions[topic]
        raw = self._call("describe topic", lambda: self._client.hget(self.keys.topics, topic))
        if raw is None:
            return None
        count = int(raw)
        with self._lock:
            self._partitions[topic] = count
        return count

    def list_topics(self) -> list[str]:
        names = self._call("list topics", lambda: self._client.hkeys(self.keys.topics))
        return sorted(text(n) for n in names)

    # -- records --------------------------------------------------------------------------
    def publish(self, records: Sequence[OutgoingRecord]) -> list[tuple[TopicPartition, int]]:
        """Append ``records``, up to :data:`PUBLISH_CHUNK` per MULTI/EXEC.

        Raises:
            RecordTooLargeError, TopicError: before anything is appended.
            StoreUnavailableError: the connection broke; the chunk in flight may or may not
                have been appended (never retried here, so never appended twice).
            StoreError: e.g. Redis is out of memory (code ``OOM``); nothing of the chunk was
                appended.
        """
        check_record_sizes(records, self.max_record_bytes)
        targets = [resolve_partition(rec, self.topic_partitions(rec.topic)) for rec in records]
        positions: list[tuple[TopicPartition, int]] = []
        now_ms = int(time.time() * 1000)
        for start in range(0, len(records), PUBLISH_CHUNK):
            chunk = list(
                zip(
                    records[start : start + PUBLISH_CHUNK],
                    targets[start : start + PUBLISH_CHUNK],
                    strict=True,
                )
            )

            def append(chunk: list[tuple[OutgoingRecord, TopicPartition]] = chunk) -> list[Any]:
                with self._client.pipeline(transaction=True) as pipe:
                    for rec, tp in chunk:
                        fields: Any = entry_fields(rec, now_ms)  # redis-py's type is invariant
                        pipe.xadd(self.keys.stream(tp), fields, id="0-*")
                    for tp in sorted({tp for _, tp in chunk}):
                        pipe.publish(self.keys.data_channel(tp.topic), tp.partition)
                    return pipe.execute()

            ids = self._call("publish", append, idempotent=False)
            positions.extend((tp, offset_of(i)) for (_, tp), i in zip(chunk, ids, strict=False))
        return positions

    def read(self, tp: TopicPartition, start: int, max_records: int) -> list[Record]:
        if max_records <= 0:
            return []
        entries = self._call(
            f"read {tp.topic}[{tp.partition}]",
            lambda: self._client.xrange(
                self.keys.stream(tp), f"0-{max(0, start) + 1}", "+", count=max_records
            ),
        )
        return [
            record_from(tp.topic, tp.partition, i, fields)
            for i, fields in entries or ()
            if i is not None
        ]

    def end_offsets(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        """Each partition's ``entries-added`` counter (offsets are dense, so it is the end)."""
        tps = [TopicPartition(t, p) for t in topics for p in range(self.topic_partitions(t) or 0)]
        if not tps:
            return {}

        def infos() -> list[Any]:
            with self._client.pipeline(transaction=False) as pipe:
                for tp in tps:
                    pipe.xinfo_stream(self.keys.stream(tp))
                return pipe.execute(raise_on_error=False)

        out: dict[TopicPartition, int] = {}
        for tp, info in zip(tps, self._call("end offsets", infos), strict=True):
            if isinstance(info, ResponseError):  # no entry yet: no stream
                out[tp] = 0
            elif isinstance(info, RedisError):
                raise translate(info, "end offsets") from info
            else:
                out[tp] = int(info["entries-added"])
        return out

    # -- groups ---------------------------------------------------------------------------
    def group_offsets(self, group: str) -> dict[TopicPartition, CommittedOffset]:
        raw = self._call(
            f"offsets of group {group}",
            lambda: self._client.hgetall(self.keys.group(group).offsets),
        )
        out: dict[TopicPartition, CommittedOffset] = {}
        for name, value in raw.items():
            done = parse_committed(value)
            if done is not None:
                out[parse_offset_field(text(name))] = done
        return out

    def list_groups(self) -> list[str]:
        raw = self._call("list groups", lambda: self._client.smembers(self.keys.groups))
        names = sorted(text(n) for n in raw)
        if not names:
            return []

        def sizes() -> list[Any]:
            with self._client.pipeline(transaction=False) as pipe:
                for name in names:
                    keys = self.keys.group(name)
                    pipe.zcard(keys.members)
                    pipe.exists(keys.offsets)
                return pipe.execute()

        found = self._call("list groups", sizes)
        pairs = zip(names, found[::2], found[1::2], strict=True)
        return [name for name, members, offsets in pairs if members or offsets]

    def group_topics(self, group: str) -> set[str]:
        from blackboard.stores.redis.group import GroupView

        keys = self.keys.group(group)

        def view() -> list[Any]:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.zrange(keys.members, 0, -1, withscores=True)
                pipe.hgetall(keys.subs)
                pipe.time()
                return pipe.execute()

        members, subs, (sec, usec) = self._call(f"members of {group}", view)
        live = GroupView.parse(members, subs, sec * 1000 + usec // 1000, {})
        return {t for topics in live.subscriptions.values() for t in topics}

    def lag(
        self, groups: Iterable[str] | None = None, topics: Iterable[str] | None = None
    ) -> list[LagRow]:
        """Per group and partition: end offset (the stream's ``entries-added``), committed
        offset and lag (end minus committed), plus what the Redis consumer group delivered
        and has pending (:class:`RedisLagRow`)."""
        rows = super().lag(groups, topics)
        streams = sorted({TopicPartition(r.topic, r.partition) for r in rows})

        def infos() -> list[Any]:
            with self._client.pipeline(transaction=False) as pipe:
                for tp in streams:
                    pipe.xinfo_groups(self.keys.stream(tp))
                return pipe.execute(raise_on_error=False)

        found: dict[tuple[TopicPartition, str], dict[str, Any]] = {}
        for tp, reply in zip(streams, self._call("lag", infos) if streams else [], strict=True):
            if isinstance(reply, list):
                for info in reply:
                    found[(tp, text(info["name"]))] = info
        out: list[LagRow] = []
        for row in rows:
            info = found.get((TopicPartition(row.topic, row.partition), row.group), {})
            read = info.get("entries-read")
            out.append(
                RedisLagRow(
                    **asdict(row),
                    delivered=None if read is None else int(read),
                    pending=int(info.get("pending", 0)),
                )
            )
        return out

    async def join(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        member_name: str = "",
    ) -> GroupMember:
        """Join ``group`` as worker slot ``member_name`` (a later process with the same slot
        takes over from this one; an empty name makes a member of its own)."""
        from blackboard.stores.redis.member import RedisMember

        member = RedisMember(self, group, topics, listener, slot=member_name)
        await member.start()
        return member

    # -- memory bounds --------------------------------------------------------------------
    def trim(self, topics: Iterable[str] | None = None) -> int:
        """Trim every partition of ``topics`` (default: all) below the lowest offset that each
        of its consumer groups has committed; returns how many entries were removed.

        A stream no group reads, or one with a group that has committed nothing on it, is
        left alone: nothing unread is ever removed. (A group created later starts at the
        oldest entry left, as a new Kafka consumer group does after retention.)
        """
        removed = 0
        for topic in self.list_topics() if topics is None else topics:
            for p in range(self.topic_partitions(topic) or 0):
                key = self.keys.stream(TopicPartition(topic, p))
                trim = functools.partial(self._trim, keys=[key], args=[self.keys.prefix])
                removed += int(self._call(f"trim {key}", trim))
        return removed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client.close()
