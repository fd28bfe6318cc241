"""Polling helpers: tests wait for a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from blackboard.records import Record, TopicPartition
from blackboard.store import GroupMember


class Listener:
    """A rebalance listener that records what it was told."""

    def __init__(self) -> None:
        self.assigned: list[TopicPartition] = []
        self.revoked: list[TopicPartition] = []
        self.lost: list[TopicPartition] = []

    async def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        self.assigned.extend(partitions)

    async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        self.revoked.extend(partitions)

    async def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        self.lost.extend(partitions)


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout: float = 30.0, what: str = ""
) -> None:
    """Wait until ``check()`` is true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if asyncio.iscoroutinefunction(check):
            result = await check()
        else:  # off the event loop: a blocking read must not starve the workers
            result = await asyncio.to_thread(check)
            if isinstance(result, Awaitable):
                result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.01)


async def settle(
    members: Sequence[GroupMember], partitions: set[TopicPartition], timeout: float = 60.0
) -> dict[GroupMember, list[Record]]:
    """Poll every member until their assignments split ``partitions`` exactly; returns what
    each polled meanwhile."""
    polled: dict[GroupMember, list[Record]] = {m: [] for m in members}
    deadline = time.monotonic() + timeout
    while True:
        for m in members:
            polled[m].extend(await m.poll(100, 0.05))
        owned = [m.assignment() for m in members]
        union = set().union(*owned)
        if union == partitions and sum(len(o) for o in owned) == len(partitions) and all(owned):
            return polled
        if time.monotonic() > deadline:
            raise AssertionError(f"assignment did not settle: {[sorted(o) for o in owned]}")


async def poll_until(member: GroupMember, count: int, timeout: float = 30.0) -> list[Record]:
    """Poll ``member`` until it returned ``count`` records in all."""
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        out.extend(await member.poll(count - len(out), 0.1))
        if time.monotonic() > deadline:
            raise AssertionError(f"polled {len(out)} of {count} records in {timeout}s")
    return out


async def poll_distinct(member: GroupMember, count: int, timeout: float = 30.0) -> list[Record]:
    """Poll until ``count`` distinct positions were returned; one record per position."""
    seen: dict[tuple[str, int, int], Record] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        for r in await member.poll(count, 0.1):
            seen.setdefault((r.topic, r.partition, r.offset), r)
        if time.monotonic() > deadline:
            raise AssertionError(f"polled {len(seen)} of {count} distinct records in {timeout}s")
    return list(seen.values())
