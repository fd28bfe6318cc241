"""Lag-aware backpressure arithmetic (not yet wired into publishers or ``blackboard lag``):
Little's-law expected wait, an AIMD publish-rate controller, Burrow's consumer-health rules
per partition, and a KEDA-style desired worker count.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from blackboard.errors import ConfigError

Health = Literal["OK", "WARN", "STALL", "STOP", "REWIND"]
Throttle = Literal["normal", "throttled", "paused"]


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
        """The new rate after one measurement of lag and drain rate."""
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
    """One observation of a partition: when, the committed offset, and the lag."""

    at: float
    offset: int
    lag: int


def burrow_health(window: Sequence[Sample], now: float) -> Health:
    """Burrow's rules over a window of a partition's recent commits (oldest first):
    REWIND if the offset went back; OK if any lag in the window is zero; STOP if the last
    commit is older than the window is long; STALL if the offset never moved; WARN if the
    offset moved but the lag rose (or held) at every step; else OK."""
    if len(window) < 2:
        return "OK"
    offsets = [s.offset for s in window]
    if any(b < a for a, b in itertools.pairwise(offsets)):
        return "REWIND"
    if any(s.lag == 0 for s in window):
        return "OK"
    if now - window[-1].at > window[-1].at - window[0].at:
        return "STOP"
    if offsets[0] == offsets[-1]:
        return "STALL"
    lags = [s.lag for s in window]
    if all(b >= a for a, b in itertools.pairwise(lags)):
        return "WARN"
    return "OK"


def desired_workers(total_lag: int, lag_threshold: int, partitions: int) -> int:
    """KEDA's Kafka scaler: ⌈total lag / lag threshold⌉ workers, at least 1 while there is lag
    (0 without), at most one per partition."""
    if lag_threshold < 1:
        raise ConfigError("lag_threshold must be >= 1")
    if total_lag <= 0:
        return 0
    return min(partitions, max(1, math.ceil(total_lag / lag_threshold)))
