"""The range assignment the embedded and Redis stores share (blackboard.stores.assignment)."""

from __future__ import annotations

from collections import Counter

from blackboard.records import TopicPartition
from blackboard.stores.assignment import range_assign
from blackboard.stores.redis.group import GroupView


def test_each_member_gets_one_contiguous_range_in_name_order() -> None:
    owners = range_assign({"c": ["t"], "a": ["t"], "b": ["t"], "d": ["t"]}, {"t": 6})
    assert [owners[TopicPartition("t", p)] for p in range(6)] == ["a", "a", "b", "c", "c", "d"]


def test_co_partitioned_topics_give_equal_partition_numbers_to_one_member() -> None:
    owners = range_assign({"m1": ["x", "y"], "m2": ["y", "x"], "m3": ["x", "y"]}, {"x": 8, "y": 8})
    for p in range(8):
        assert owners[TopicPartition("x", p)] == owners[TopicPartition("y", p)]
    sizes = Counter(owners[TopicPartition("x", p)] for p in range(8))
    assert max(sizes.values()) - min(sizes.values()) <= 1 and len(sizes) == 3


def test_a_topic_goes_only_to_its_subscribers_and_missing_topics_to_nobody() -> None:
    owners = range_assign({"a": ["x"], "b": ["x", "y"], "c": ["z"]}, {"x": 2, "y": 3})
    assert owners == {
        TopicPartition("x", 0): "a",
        TopicPartition("x", 1): "b",
        TopicPartition("y", 0): "b",
        TopicPartition("y", 1): "b",
        TopicPartition("y", 2): "b",
    }


def test_with_more_members_than_partitions_some_own_nothing() -> None:
    owners = range_assign({m: ["t"] for m in "edcba"}, {"t": 2})
    assert owners == {TopicPartition("t", 0): "a", TopicPartition("t", 1): "c"}


def test_the_redis_group_view_assigns_with_the_shared_function() -> None:
    view = GroupView({"s2": ("x",), "s1": ("x", "y")}, {"x": 4, "y": 2})
    assert view.assignment() == range_assign(view.subscriptions, view.partitions)
    assert view.assignment()[TopicPartition("x", 3)] == "s2"
