"""Lag-aware backpressure: the arithmetic every reader of lag shares.

- :func:`expected_wait_s` — Little's law: lag / drain rate.
- :class:`AimdController` — a publish rate against a target wait (normal / throttled / paused);
  :mod:`scheduler.throttle` feeds it and gates publishes with it.
- :func:`partition_status`, :func:`worst` — Burrow's consumer-health rules over a window of
  sampled offsets; :func:`desired_workers` — KEDA's worker count.
- :class:`LagWindows` — windows of :class:`Sample` per group partition, built from
  ``Store.lag()`` rows, and the per-group report (:class:`GroupHealth`) that ``blackboard lag``
  and the dashboard both print.

Burrow evaluates each partition over a window of recent commits; we sample the end and
committed offsets instead of reading commit events, so a commit of the same offset is
indistinguishable from no commit, and whether the consumer still commits at all (Burrow's
"time since the last commit is longer than the window" rule) is judged from the whole group:
it is active when its committed offset moved on any partition in the window. The rules, in
order, per partition:

- ``OK``: fewer than two samples, or the lag was zero in any sample of the window.
- ``REWIND``: the committed offset went backwards between two samples.
- ``STOP``: the committed offset did not move, lag is left, and the group committed nothing
  anywhere in the window (the consumer stopped).
- ``STALL``: the committed offset did not move, lag is left, while the group commits on other
  partitions (the consumer is alive but stuck on this one).
- ``WARN``: the committed offset moves, but the lag never fell between two samples.
- ``OK`` otherwise.

A group's status is its worst partition's (STOP above STALL above REWIND above WARN above OK).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from blackboard.errors import ConfigError
from blackboard.store import LagRow

Health = Literal["OK", "WARN", "STALL", "STOP", "REWIND"]
Throttle = Literal["normal", "throttled", "paused"]
SEVERITY: dict[Health, int] = {"OK": 0, "WARN": 1, "REWIND": 2, "STALL": 3, "STOP": 4}


def expected_wait_s(lag: int, drain_per_s: float) -> float:
    """Little's law: how long a record published now waits (``lag / drain rate``); infinite
    when there is lag and nothing drains."""
    if lag <= 0:
        return 0.0
    return math.inf if drain_per_s <= 0 else lag / drain_per_s


@dataclass(slots=True)
class AimdController:
    """Sets a publish rate: additive increase while the consumers' expected wait is under
    ``target_wait_s``, multiplicative decrease when it is over.

    Attributes:
        rate: the current rate (records/s).
        min_rate: below this the publisher is paused (rate 0 until the wait falls).
        max_rate: the rate when nobody is behind.
        increase: records/s added per update under the target.
        decrease: factor the rate is multiplied by over the target (0 < decrease < 1).

    Raises:
        ConfigError: a factor or target out of range.
    """

    target_wait_s: float
    max_rate: float
    min_rate: float = 1.0
    increase: float = 10.0
    decrease: float = 0.5
    rate: float = -1.0

    def __post_init__(self) -> None:
        if not (0 < self.decrease < 1) or self.target_wait_s <= 0 or self.max_rate <= 0:
            raise ConfigError("AIMD needs 0 < decrease < 1, target_wait_s > 0, max_rate > 0")
        if self.rate < 0:
            self.rate = self.max_rate

    def update(self, lag: int, drain_per_s: float) -> float:
        """The new rate after one measurement of lag and drain rate (0 while paused)."""
        if expected_wait_s(lag, drain_per_s) > self.target_wait_s:
            self.rate = self.rate * self.decrease
        else:
            self.rate = min(self.max_rate, max(self.rate, self.min_rate) + self.increase)
        return self.rate if self.rate >= self.min_rate else 0.0

    @property
    def state(self) -> Throttle:
        """normal (at the maximum), throttled, or paused (below the minimum)."""
        if self.rate < self.min_rate:
            return "paused"
        return "normal" if self.rate >= self.max_rate else "throttled"


@dataclass(frozen=True, slots=True)
class Sample:
    """One partition's offsets at one time (``committed`` None: nothing committed yet)."""

    ts: float
    end: int
    committed: int | None

    @property
    def lag(self) -> int:
        """End offset minus committed offset (0 at least)."""
        return max(0, self.end - (self.committed or 0))


def moved(window: Sequence[Sample]) -> bool:
    """Whether the committed offset changed within ``window``."""
    return len({s.committed for s in window}) > 1


def partition_status(window: Sequence[Sample], group_active: bool) -> Health:
    """Burrow's status of one partition over ``window`` (oldest first); ``group_active``: the
    group's committed offset moved on some partition in the window."""
    if len(window) < 2 or any(s.lag == 0 for s in window):
        return "OK"
    committed = [s.committed or 0 for s in window]
    if any(b < a for a, b in itertools.pairwise(committed)):
        return "REWIND"
    if committed[0] == committed[-1]:
        return "STALL" if group_active else "STOP"
    lags = [s.lag for s in window]
    if all(b >= a for a, b in itertools.pairwise(lags)):
        return "WARN"
    return "OK"


def worst(statuses: Iterable[Health]) -> Health:
    """The most severe of ``statuses`` (OK when empty)."""
    return max(statuses, key=SEVERITY.__getitem__, default="OK")


def desired_workers(total_lag: int, lag_threshold: int, partitions: int) -> int:
    """KEDA's Kafka scaler: ⌈total lag / lag threshold⌉ workers, at least 1 while there is lag
    (0 without: KEDA scales an idle group to its minimum), at most one per partition (more
    would sit idle).

    Raises:
        ConfigError: ``lag_threshold`` below 1.
    """
    if lag_threshold < 1:
        raise ConfigError(f"lag threshold must be at least 1, got {lag_threshold}")
    if total_lag <= 0 or partitions <= 0:
        return 0
    return min(partitions, max(1, math.ceil(total_lag / lag_threshold)))


def rate(window: Sequence[tuple[float, int]]) -> float:
    """Records per second from the first to the last ``(time, offset sum)`` of a window."""
    if len(window) < 2 or window[-1][0] <= window[0][0]:
        return 0.0
    return max(0.0, (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]))


@dataclass(frozen=True, slots=True)
class PartitionHealth:
    """One group partition at the last sample, with its status over the window."""

    topic: str
    partition: int
    end_offset: int
    committed_offset: int | None
    lag: int
    status: Health


@dataclass(frozen=True, slots=True)
class TopicDrain:
    """One group on one topic: lag, drain rate over the window and the expected wait
    (None while the window holds fewer than two samples)."""

    topic: str
    lag: int
    drain_per_s: float | None
    expected_wait_s: float | None


@dataclass(frozen=True, slots=True)
class GroupHealth:
    """A group's report: worst partition status, lag, KEDA's desired workers, drain rate."""

    group: str
    status: Health
    total_lag: int
    partitions: int
    desired_workers: int
    lag_threshold: int
    throughput: float
    samples: int
    rows: list[PartitionHealth] = field(default_factory=list)
    topics: list[TopicDrain] = field(default_factory=list)


Key = tuple[str, str, int]  # group, topic, partition


class LagWindows:
    """Windows of the last ``size`` samples of every group partition, fed with lag rows.

    Not thread-safe: callers that sample from a thread hold their own lock.

    Args:
        size: samples kept per partition (the health window).
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ConfigError(f"a lag window holds at least 1 sample, got {size}")
        self.size = size
        self.samples = 0  # samples added so far
        self.partitions: dict[Key, deque[Sample]] = {}
        # Sum of committed offsets per group and per (group, topic), for drain rates.
        self._done: dict[str, deque[tuple[float, int]]] = {}
        self._topic_done: dict[tuple[str, str], deque[tuple[float, int]]] = {}

    def add(self, rows: Iterable[LagRow], now: float) -> None:
        """Append one sample taken at ``now`` (one ``Store.lag()`` call's rows)."""
        self.samples += 1
        done: dict[str, int] = {}
        topic_done: dict[tuple[str, str], int] = {}
        for r in rows:
            key = (r.group, r.topic, r.partition)
            window = self.partitions.get(key)
            if window is None:
                window = self.partitions[key] = deque(maxlen=self.size)
            window.append(Sample(now, r.end_offset, r.committed_offset))
            committed = r.committed_offset or 0
            done[r.group] = done.get(r.group, 0) + committed
            topic_done[r.group, r.topic] = topic_done.get((r.group, r.topic), 0) + committed
        for group, total in done.items():
            self._done.setdefault(group, deque(maxlen=self.size)).append((now, total))
        for gt, total in topic_done.items():
            self._topic_done.setdefault(gt, deque(maxlen=self.size)).append((now, total))

    def groups(self) -> list[str]:
        """The groups seen so far, sorted."""
        return sorted({g for g, _, _ in self.partitions})

    def drain_per_s(self, group: str, topic: str | None = None) -> float | None:
        """Records per second the group committed over the window (on ``topic`` if given);
        None with fewer than two samples."""
        window = self._done.get(group) if topic is None else self._topic_done.get((group, topic))
        if window is None or len(window) < 2:
            return None
        return rate(list(window))

    def rows(self, group: str) -> list[PartitionHealth]:
        """The group's partitions at the last sample, each with its status."""
        windows = sorted((k, list(w)) for k, w in self.partitions.items() if k[0] == group)
        active = any(moved(w) for _, w in windows)
        return [
            PartitionHealth(
                topic, partition, w[-1].end, w[-1].committed, w[-1].lag,
                partition_status(w, active),
            )
            for (_, topic, partition), w in windows
        ]  # fmt: skip

    def health(self, group: str, lag_threshold: int) -> GroupHealth:
        """The group's report; ``lag_threshold`` is the lag one worker absorbs (KEDA)."""
        rows = self.rows(group)
        total = sum(r.lag for r in rows)
        per_topic: dict[str, int] = {}
        topic_lag: dict[str, int] = {}
        for r in rows:
            per_topic[r.topic] = per_topic.get(r.topic, 0) + 1
            topic_lag[r.topic] = topic_lag.get(r.topic, 0) + r.lag
        partitions = max(per_topic.values(), default=0)
        topics = []
        for topic, lag in sorted(topic_lag.items()):
            drain = self.drain_per_s(group, topic)
            wait = None if drain is None else expected_wait_s(lag, drain)
            topics.append(TopicDrain(topic, lag, drain, wait))
        done = self._done.get(group, ())
        return GroupHealth(
            group=group,
            status=worst(r.status for r in rows),
            total_lag=total,
            partitions=partitions,
            desired_workers=desired_workers(total, lag_threshold, partitions),
            lag_threshold=lag_threshold,
            throughput=rate(list(done)),
            samples=len(done),
            rows=rows,
            topics=topics,
        )
