"""One atomic commit on Redis: ``WATCH`` the leases, check them, then one ``MULTI``/``EXEC``.

The order of a commit:

1. Check partitions before anything is sent (:meth:`blackboard.store.GroupMember.commit`
   checked the sizes of records and offset metadata already).
2. ``WATCH`` the lease keys of the partitions whose offsets (or state) are committed and read
   them: a lease that is not the member's any more means the partition moved, and nothing is
   sent (the member reports :class:`FencedError`).
3. ``MULTI``; one ``EVAL`` of :data:`~blackboard.stores.redis.scripts.WRITE` that ``XADD``s the
   outputs and dead letters with IDs ``0-*`` and ``XACK``s the inputs below the new committed
   offsets (one command for the whole commit: redis-py packs, queues and reads a reply for
   each command in Python); ``HSET`` the committed offsets and metadata; ``HSET``/``HDEL`` the
   state entries; ``PUBLISH`` wake-ups for the partitions appended to; ``EXEC``.
4. If a watched lease was written between ``WATCH`` and ``EXEC`` (a new owner took it), Redis
   runs none of it (redis-py raises ``WatchError``), so a zombie never gets anything visible.
   Out of memory, Redis refuses the whole transaction too: nothing is acknowledged that was not
   processed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blackboard.records import AtomicCommit, CommittedOffset, OutgoingRecord, TopicPartition
from blackboard.stores.redis import scripts
from blackboard.stores.redis.entries import encode_headers, text
from blackboard.stores.redis.settings import GroupKeys, RedisKeys, offset_field
from blackboard.stores.redis.store import format_committed

if TYPE_CHECKING:
    import redis.asyncio

#: Per partition: entries to set, keys to delete.
StateWrites = list[tuple[int, dict[str, bytes], list[str]]]


@dataclass(slots=True)
class CommitPlan:
    """What one commit writes, ready to send."""

    streams: list[str]
    """The streams :data:`~blackboard.stores.redis.scripts.WRITE` appends to or acknowledges
    in (its ``KEYS``)."""
    writes: list[Any]
    """The arguments of that script (empty: nothing to append or acknowledge)."""
    appended: list[TopicPartition]
    """The partitions appended to, sorted (each gets a wake-up)."""
    offsets: Mapping[TopicPartition, CommittedOffset]
    state: StateWrites
    leases: dict[TopicPartition, str]
    """The lease values the commit depends on."""


def plan_commit(
    keys: RedisKeys,
    group: str,
    appends: Sequence[tuple[TopicPartition, OutgoingRecord]],
    acks: Mapping[TopicPartition, tuple[int, int]],
    now_ms: int,
    *,
    offsets: Mapping[TopicPartition, CommittedOffset],
    state: StateWrites,
    leases: dict[TopicPartition, str],
) -> CommitPlan:
    """The plan of a commit that appends ``appends`` (outputs, then dead letters, each with its
    partition) stamped ``now_ms``, and acknowledges per partition the offsets ``[first, end)``
    of ``acks``. Each entry's fields are encoded once, straight into the script's arguments.
    """
    index: dict[TopicPartition, int] = {}
    streams: list[str] = []
    writes: list[Any] = [now_ms, group, len(appends)]
    add = writes.extend
    for tp, rec in appends:
        i = index.get(tp)
        if i is None:
            streams.append(keys.stream(tp))
            i = index[tp] = len(streams)
        key, value, headers = rec.key, rec.value, rec.wire_headers()
        control = i * 8
        if key is None:
            key = b""
        else:
            control += 1
        if value is None:
            value = b""
        else:
            control += 2
        if headers:
            control += 4
            add((control, key, value, encode_headers(headers)))
        else:
            add((control, key, value, b""))
    appended = sorted(index)
    for tp, (first, end) in acks.items():
        if first >= end:
            continue
        i = index.get(tp)
        if i is None:
            streams.append(keys.stream(tp))
            i = index[tp] = len(streams)
        add((i, first, end))
    return CommitPlan(
        streams=streams if len(writes) > 3 else [],
        writes=writes if len(writes) > 3 else [],
        appended=appended,
        offsets=offsets,
        state=state,
        leases=leases,
    )


def state_writes(commit: AtomicCommit) -> StateWrites:
    """The commit's state updates per partition, the last write of each key winning."""
    final: dict[int, dict[str, bytes | None]] = {}
    for update in commit.state:
        final.setdefault(update.partition, {})[update.key] = update.value
    out: StateWrites = []
    for partition, entries in sorted(final.items()):
        sets = {k: v for k, v in entries.items() if v is not None}
        deletes = [k for k, v in entries.items() if v is None]
        out.append((partition, sets, deletes))
    return out


async def execute_commit(
    client: redis.asyncio.Redis, keys: RedisKeys, gk: GroupKeys, plan: CommitPlan
) -> list[TopicPartition]:
    """Send ``plan`` as one transaction.

    Returns:
        The partitions whose lease is not the expected one any more (then nothing was sent),
        or an empty list when the transaction ran.

    Raises:
        WatchError: a watched lease was written meanwhile; nothing ran (check again).
        RedisError: nothing ran, or (connection lost during ``EXEC``) the committed offsets
            say whether it did.
    """
    async with client.pipeline(transaction=True) as pipe:
        if plan.leases:
            names = [gk.lease(tp) for tp in plan.leases]
            await pipe.watch(*names)
            current = await pipe.mget(names)
            moved = [
                tp
                for tp, value in zip(plan.leases, current, strict=True)
                if value is None or text(value) != plan.leases[tp]
            ]
            if moved:  # leaving the block unwatches
                return moved
        pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves multi() unannotated
        if plan.writes:
            pipe.eval(scripts.WRITE, len(plan.streams), *plan.streams, *plan.writes)
        if plan.offsets:
            positions: Any = {offset_field(t): format_committed(c) for t, c in plan.offsets.items()}
            pipe.hset(gk.offsets, mapping=positions)
        for partition, sets, deletes in plan.state:
            if sets:
                mapping: Any = sets  # as above
                pipe.hset(gk.state(partition), mapping=mapping)
            if deletes:
                pipe.hdel(gk.state(partition), *deletes)
        for tp in plan.appended:
            pipe.publish(keys.data_channel(tp.topic), tp.partition)
        await pipe.execute()
    return []
