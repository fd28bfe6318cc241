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
from blackboard.stores.assignment import range_assign


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
        """The owner slot of every partition: :func:`~blackboard.stores.assignment.range_assign`
        over the live members, the same function as the embedded store's."""
        return range_assign(self.subscriptions, self.partitions)


def lease_epoch(lease: str) -> int:
    """The epoch of a lease value ``<epoch>|<slot>|<token>``."""
    return int(lease.partition("|")[0])
