"""The partitions one member of a Redis consumer group owns, and the sync that moves them.

Each partition has a lease ``<epoch>|<slot>|<token>`` (:mod:`~blackboard.stores.redis.scripts`),
whose epoch rises on every take. A sync, run inside the member's poll:

- reports partitions whose lease changed (``on_lost``): the member's reads and commits of them
  are refused;
- gives up partitions the assignment (:mod:`~blackboard.stores.redis.group`) moves elsewhere,
  after the runner's ``on_revoked`` commit;
- takes those that should be the member's once their lease is free or its holder is gone, then
  ``on_assigned``. Taking one creates the Redis consumer group if needed, claims every entry
  pending on earlier owners (``XAUTOCLAIM``) and acknowledges those below the committed offset;
  reading goes on from the committed offset.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from redis.exceptions import ResponseError

from blackboard.errors import FencedError
from blackboard.logs import get_logger
from blackboard.records import AtomicCommit, TopicPartition
from blackboard.store import RebalanceListener
from blackboard.stores.redis import scripts
from blackboard.stores.redis.entries import after, offset_of, text
from blackboard.stores.redis.group import GroupView, lease_epoch
from blackboard.stores.redis.session import GroupSession
from blackboard.stores.redis.settings import RedisKeys, offset_field
from blackboard.stores.redis.store import parse_committed

if TYPE_CHECKING:
    import redis.asyncio

log = get_logger("redis")

#: How often a member that could not take every partition it should own tries again, besides
#: the group channel telling it a lease was freed.
TAKE_RETRY_S = 0.2
#: Pending entries moved per XAUTOCLAIM call.
CLAIM_BATCH = 1000


def partition_name(tp: TopicPartition) -> str:
    """``topic[partition]``, as log lines and errors name a partition."""
    return f"{tp.topic}[{tp.partition}]"


class Ownership:
    """The leases one member holds, with each owned partition's read cursor and floor.

    Args:
        client: the member's client.
        keys: the store's key names.
        session: the member's session (slot, token, superseded or expelled).
        listener: told about partitions assigned, revoked and lost, inside :meth:`sync`.
        member_id: the member's name in errors.
        forgotten: called with each partition the member stops owning.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: RedisKeys,
        session: GroupSession,
        listener: RebalanceListener,
        *,
        member_id: str,
        forgotten: Callable[[TopicPartition], None],
    ) -> None:
        self._redis = client
        self._keys = keys
        self._gk = session.keys
        self._group = session.group
        self._slot = session.slot
        self._session = session
        self._listener = listener
        self._member_id = member_id
        self._forgotten = forgotten
        self._take_script = client.register_script(scripts.TAKE)
        self._release_script = client.register_script(scripts.RELEASE)
        self._claim_script = client.register_script(scripts.CLAIM)
        self._partitions: dict[str, int] = {}
        # Per owned partition: its lease value, where reading goes on ('>' or an entry ID) and
        # the floor below which every entry is acknowledged. Entries finished above the
        # committed offset stay pending until it passes them, so a new owner reads them again
        # (and skips them, as the metadata says) as on Kafka.
        self._leases: dict[TopicPartition, str] = {}
        self._cursor: dict[TopicPartition, str] = {}
        self._floor: dict[TopicPartition, int] = {}
        self._lost: set[TopicPartition] = set()
        self._to_release: dict[TopicPartition, str] = {}
        self._sync_due = True
        self._incomplete = False
        self._last_sync = 0.0

    # -- what is owned --------------------------------------------------------------------
    @property
    def leases(self) -> Mapping[TopicPartition, str]:
        """Owned partition -> its lease value (read-only)."""
        return self._leases

    @property
    def incomplete(self) -> bool:
        """The last sync could not take every partition the member should own."""
        return self._incomplete

    def cursor(self, tp: TopicPartition) -> str:
        """Where reading ``tp`` goes on: ``>`` (new entries) or an entry ID."""
        return self._cursor[tp]

    def move_cursor(self, tp: TopicPartition, cursor: str) -> None:
        """Go on reading ``tp`` from ``cursor``."""
        self._cursor[tp] = cursor

    def floor(self, tp: TopicPartition) -> int:
        """The offset of ``tp`` below which every entry is acknowledged."""
        return self._floor[tp]

    def floor_or(self, tp: TopicPartition, default: int) -> int:
        """:meth:`floor`, or ``default`` for a partition not owned."""
        return self._floor.get(tp, default)

    def committed_up_to(self, tp: TopicPartition, offset: int) -> None:
        """A commit of ``offset`` on ``tp`` went through: raise the floor (if still owned)."""
        if tp in self._leases:
            self._floor[tp] = max(self._floor.get(tp, 0), offset)

    def rewind(self, tp: TopicPartition, offset: int) -> bool:
        """Read ``tp`` again from ``offset``; False if it is not owned."""
        if tp not in self._leases:
            return False
        self._cursor[tp] = after(max(0, offset))
        self._floor[tp] = min(self._floor.get(tp, offset), max(0, offset))
        return True

    def leases_for(self, commit: AtomicCommit) -> dict[TopicPartition, str]:
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
                    f"{self._member_id} does not own {partition_name(tp)} in group {self._group}",
                    code="FENCED",
                )
            leases[tp] = lease
        for update in commit.state:
            holder = next(
                (tp for tp in sorted(self._leases) if tp.partition == update.partition), None
            )
            if holder is None:
                raise FencedError(
                    f"{self._member_id} does not own state partition {update.partition} of "
                    f"{self._group}",
                    code="FENCED",
                )
            leases[holder] = self._leases[holder]
        return leases

    def held(self) -> dict[TopicPartition, str]:
        """Every lease to free on leaving: those owned and those not freed yet."""
        return {**self._to_release, **self._leases}

    def drop_all(self) -> None:
        """Forget every partition without reporting it (the member is closing)."""
        for tp in list(self._leases):
            self._forget(tp)
        self._to_release.clear()

    def lose(self, tp: TopicPartition) -> None:
        """The lease of ``tp`` is not the member's any more: report it at the next sync."""
        if tp in self._leases:
            self._forget(tp)
            self._lost.add(tp)
            self._sync_due = True

    # -- syncing --------------------------------------------------------------------------
    def request_sync(self) -> None:
        """The group may have changed: sync at the next poll."""
        self._sync_due = True

    def needs_sync(self) -> bool:
        """Whether the next poll should :meth:`sync` first."""
        return (
            self._sync_due
            or bool(self._lost)
            or (self._incomplete and time.monotonic() - self._last_sync >= TAKE_RETRY_S)
        )

    async def sync(self) -> None:
        """Report lost partitions, give up those that should move, take those that should be
        ours (the rebalance callbacks run here, inside poll).

        Raises:
            RedisError: Redis did not answer (the next poll syncs again).
        """
        self._sync_due = False
        self._last_sync = time.monotonic()
        session = self._session
        if session.superseded or session.expelled:
            for tp in list(self._leases):  # the leases are not ours to free any more
                self.lose(tp)
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
        if self._slot not in view.subscriptions:
            return  # our session is running out: the heartbeat finds out and rejoins
        target = view.assignment()
        revoke = sorted(tp for tp in self._leases if target.get(tp) != self._slot)
        if revoke:
            await self._listener.on_revoked(revoke)
            leases = {tp: self._leases[tp] for tp in revoke if tp in self._leases}
            for tp in revoke:
                self._forget(tp)
            self._to_release.update(leases)
            await self._release(leases)
        take = sorted(
            tp for tp, slot in target.items() if slot == self._slot and tp not in self._leases
        )
        taken = [tp for tp in take if await self._take(tp)]
        self._incomplete = len(taken) < len(take)
        if taken:
            await self._listener.on_assigned(taken)

    async def partition_counts(self, topics: Iterable[str]) -> dict[str, int]:
        """The partition counts of ``topics`` (cached; topics that do not exist left out)."""
        wanted = sorted(set(topics))
        missing = [t for t in wanted if t not in self._partitions]
        if missing:
            found = await self._redis.hmget(self._keys.topics, missing)
            for topic, raw in zip(missing, found, strict=True):
                if raw is not None:
                    self._partitions[topic] = int(raw)
        return {t: self._partitions[t] for t in wanted if t in self._partitions}

    async def _check_leases(self) -> None:
        owned = sorted(self._leases)
        if not owned:
            return
        values = await self._redis.mget([self._gk.lease(tp) for tp in owned])
        for tp, value in zip(owned, values, strict=True):
            if tp in self._leases and (value is None or text(value) != self._leases[tp]):
                self.lose(tp)

    async def _report_lost(self) -> None:
        if self._lost:
            lost = sorted(self._lost)
            self._lost.clear()
            names = [partition_name(t) for t in lost]
            log.warning("partitions lost", group=self._group, partitions=names)
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
        counts = await self.partition_counts(topics)
        return GroupView.parse(members, subs, sec * 1000 + usec // 1000, counts)

    async def _take(self, tp: TopicPartition) -> bool:
        """Take the partition's lease if it is free; claim what earlier owners left pending and
        read from the committed offset."""
        gk = self._gk
        raw = await self._take_script(
            keys=[gk.lease(tp), gk.members, gk.tokens], args=[self._slot, self._session.token]
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
            group=self._group,
            partition=partition_name(tp),
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
        group = self._group
        try:
            await self._redis.xgroup_create(stream, group, id=after(committed), mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        claimed = await self._claim_script(keys=[stream], args=[group, self._slot, CLAIM_BATCH])
        done_ids = [i for i in claimed if offset_of(i) < committed]
        if done_ids:  # committed by an earlier owner whose acknowledgement was lost
            await self._redis.xack(stream, group, *done_ids)
        return committed, len(claimed) - len(done_ids)

    def _forget(self, tp: TopicPartition) -> None:
        self._leases.pop(tp, None)
        self._cursor.pop(tp, None)
        self._floor.pop(tp, None)
        self._forgotten(tp)
