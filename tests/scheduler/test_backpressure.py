"""Backpressure arithmetic: Little's law, AIMD, Burrow's rules, KEDA's worker count."""

from __future__ import annotations

import math

from scheduler.backpressure import (
    AimdController,
    Sample,
    desired_workers,
    expected_wait_s,
    moved,
    partition_status,
    worst,
)


def test_expected_wait_is_lag_over_drain_rate() -> None:
    assert expected_wait_s(1000, 100.0) == 10.0
    assert expected_wait_s(0, 0.0) == 0.0
    assert expected_wait_s(5, 0.0) == math.inf


def test_aimd_halves_over_the_target_and_climbs_back_linearly() -> None:
    c = AimdController(target_wait_s=5.0, max_rate=100.0, increase=10.0, min_rate=5.0)
    assert c.state == "normal"
    assert c.update(lag=1000, drain_per_s=100.0) == 50.0  # 10 s > 5 s
    assert c.state == "throttled"
    assert c.update(lag=1000, drain_per_s=100.0) == 25.0
    assert c.update(lag=100, drain_per_s=100.0) == 35.0  # 1 s: additive increase
    for _ in range(4):
        c.update(lag=1000, drain_per_s=0.0)
    assert c.state == "paused" and c.update(lag=1000, drain_per_s=0.0) == 0.0
    for _ in range(20):
        c.update(lag=0, drain_per_s=0.0)
    assert c.rate == 100.0 and c.state == "normal"


def test_burrow_rules_on_sampled_offsets() -> None:
    def window(*points: tuple[int, int]) -> list[Sample]:  # (committed, lag)
        return [Sample(float(i), off + lag, off) for i, (off, lag) in enumerate(points)]

    def health(w: list[Sample], group_active: bool = True) -> str:
        return partition_status(w, group_active or moved(w))

    assert health(window((10, 5), (12, 0), (14, 3))) == "OK"
    assert health(window((10, 5), (10, 6), (10, 8))) == "STALL"
    assert health(window((10, 5), (10, 6), (10, 8)), group_active=False) == "STOP"
    assert health(window((10, 5), (12, 6), (14, 6))) == "WARN"  # lag never falls
    assert health(window((10, 9), (12, 6), (14, 4))) == "OK"
    assert health(window((10, 5), (8, 6), (14, 6))) == "REWIND"
    assert worst(["OK", "STALL", "WARN"]) == "STALL"


def test_desired_workers_follow_keda() -> None:
    assert desired_workers(0, 100, 8) == 0
    assert desired_workers(1, 100, 8) == 1
    assert desired_workers(350, 100, 8) == 4
    assert desired_workers(10_000, 100, 8) == 8
