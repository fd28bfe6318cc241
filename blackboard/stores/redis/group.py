"""Who is in a Redis consumer group and which partitions each member should own.

Redis has no group coordinator, so every member computes the assignment itself from the same
facts — the live members (session expiry in Redis server time), what each subscribes to, and
the topics' partition counts — with one deterministic function. Members that see the same view
agree; one that saw an older view corrects itself at its next sync (on the group's channel or
after a heartbeat interval). Ownership itself changes only through the lease scripts, so a
member acting on a stale view can delay a move but never make two owners.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from blackboard.records import TopicPartition


@dataclass(frozen=True, slots=True)
class GroupView:
    """The live members of a group and the partition counts of their topics."""

    subscriptions: Mapping[str, tuple[str, ...]]
    """slot -> subscribed topics, for members whose session has not run out."""
    partitions: Mapping[str, int]
    """topic -> partition count (topics that do not exist are left out)."""

    @classmethod
    def parse(
        cls,
        members: list[tuple[bytes, float]],
        subs: Mapping[bytes, bytes],
        now_ms: int,
        partitions: Mapping[str, int],
    ) -> GroupView:
        """A view from the raw members sorted set, subscriptions hash and server time."""
        live: dict[str, tuple[str, ...]] = {}
        for raw_slot, expiry in members:
            topics = subs.get(raw_slot)
            if expiry > now_ms and topics is not None:
                live[raw_slot.decode()] = tuple(json.loads(topics))
        return cls(live, dict(partitions))

    def assignment(self) -> dict[TopicPartition, str]:
        """Range assignment per topic: partition p of a topic with n partitions goes to the
        subscriber at index ``p * len(subscribers) // n`` (subscribers sorted by slot), so equal
        partition numbers of co-partitioned topics go to the same member."""
        target: dict[TopicPartition, str] = {}
        topics = sorted({t for ts in self.subscriptions.values() for t in ts})
        for topic in topics:
            n = self.partitions.get(topic)
            if not n:
                continue
            subscribers = sorted(s for s, ts in self.subscriptions.items() if topic in ts)
            for p in range(n):
                target[TopicPartition(topic, p)] = subscribers[p * len(subscribers) // n]
        return target


def lease_epoch(lease: str) -> int:
    """The epoch of a lease value ``<epoch>|<slot>|<token>``."""
    return int(lease.partition("|")[0])
