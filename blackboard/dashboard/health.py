"""Burrow-style consumer health over a window of sampled offsets.

Burrow evaluates each partition over a window of recent committed offsets; we sample the end
and committed offsets every interval instead of reading commit events, so a commit of the
same offset is indistinguishable from no commit, and whether the consumer still commits at all
is judged from the whole group: it is active when its committed offset moved on any partition
in the window. The rules, in order, per partition:

- ``OK``: fewer than two samples, or the lag was zero in any sample of the window.
- ``REWIND``: the committed offset went backwards between two samples.
- ``STOP``: the committed offset did not move, lag is left, and the group committed nothing
  anywhere in the window (the consumer stopped).
- ``STALL``: the committed offset did not move, lag is left, while the group commits on other
  partitions (the consumer is alive but stuck on this one).
- ``WARN``: the committed offset moves, but the lag grew between every pair of samples.
- ``OK`` otherwise.

A group's status is its worst partition's (STOP, STALL, REWIND above WARN above OK).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Status = Literal["OK", "WARN", "STALL", "STOP", "REWIND"]
SEVERITY: dict[Status, int] = {"OK": 0, "WARN": 1, "REWIND": 2, "STALL": 3, "STOP": 4}


@dataclass(frozen=True, slots=True)
class Sample:
    """One partition's offsets at one time (``committed`` None: nothing committed yet)."""

    ts: float
    end: int
    committed: int | None

    @property
    def lag(self) -> int:
        return max(0, self.end - (self.committed or 0))


def moved(window: Sequence[Sample]) -> bool:
    """Whether the committed offset changed within ``window``."""
    return len({s.committed for s in window}) > 1


def partition_status(window: Sequence[Sample], group_active: bool) -> Status:
    """The status of one partition over ``window`` (oldest first); ``group_active``: the
    group's committed offset moved on some partition in the window."""
    if len(window) < 2 or any(s.lag == 0 for s in window):
        return "OK"
    committed = [s.committed or 0 for s in window]
    if any(b < a for a, b in itertools.pairwise(committed)):
        return "REWIND"
    if committed[0] == committed[-1]:
        return "STALL" if group_active else "STOP"
    lags = [s.lag for s in window]
    if all(b > a for a, b in itertools.pairwise(lags)):
        return "WARN"
    return "OK"


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe of ``statuses`` (OK when empty)."""
    return max(statuses, key=SEVERITY.__getitem__, default="OK")


def desired_workers(total_lag: int, lag_threshold: int, partitions: int) -> int:
    """ceil(total lag / threshold), at least one and at most the partition count (more
    workers than partitions would sit idle)."""
    wanted = math.ceil(total_lag / lag_threshold) if lag_threshold > 0 else partitions
    return max(1, min(partitions, wanted)) if partitions else 0


def rate(window: Sequence[tuple[float, int]]) -> float:
    """Records per second from the first to the last ``(time, offset sum)`` of a window."""
    if len(window) < 2 or window[-1][0] <= window[0][0]:
        return 0.0
    return max(0.0, (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]))
