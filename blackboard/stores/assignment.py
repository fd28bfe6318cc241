"""Range assignment: which member of a group owns which partition.

Stores without a group coordinator of their own (the embedded store, Redis) assign partitions
with this one function, so every such store spreads a group alike (Kafka's brokers and
librdkafka assign with ``partition.assignment.strategy=range``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from blackboard.records import TopicPartition


def range_assign(
    subscriptions: Mapping[str, Iterable[str]], partitions: Mapping[str, int]
) -> dict[TopicPartition, str]:
    """The owner of every partition of every subscribed topic.

    Per topic, partition ``p`` of ``n`` goes to the subscriber at index
    ``p * len(subscribers) // n``, the topic's subscribers sorted by name: each gets one
    contiguous range, the ranges' sizes differ by at most one, and equal partition numbers of
    co-partitioned topics go to the same member (joins and keyed state rely on it).

    Args:
        subscriptions: member name -> the topics it subscribes to.
        partitions: topic -> partition count; topics left out (not created yet) or with no
            partitions are not assigned.
    """
    subscribers: dict[str, list[str]] = {}
    for member, topics in subscriptions.items():
        for topic in topics:
            subscribers.setdefault(topic, []).append(member)
    target: dict[TopicPartition, str] = {}
    for topic in sorted(subscribers):
        n = partitions.get(topic)
        if not n:
            continue
        members = sorted(set(subscribers[topic]))
        for p in range(n):
            target[TopicPartition(topic, p)] = members[p * len(members) // n]
    return target
