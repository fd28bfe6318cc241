"""Sampling lag and end offsets every interval, and the views built from the samples.

The store is asked once per interval, from a thread (stores are synchronous); pages and the
event stream read the latest snapshot, so any number of viewers cost the store nothing more.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from blackboard.blackboard import Blackboard
from blackboard.deadletters import DeadLetters
from blackboard.logs import get_logger
from blackboard.shell.dashboard.settings import DashboardSettings
from blackboard.status import read_status
from blackboard.store import LagRow
from blackboard.topics import DLQ_SUFFIX
from scheduler.backpressure import LagWindows, rate

log = get_logger("dashboard")

HISTORY = 300  # points of each group's lag chart (10 minutes at the default 2 s)
DLQ_REFRESH_S = 5.0  # counting open dead letters reads every DLQ topic: not on every tick
Key = tuple[str, str, int]  # group, topic, partition


def _extras(row: LagRow) -> dict[str, Any]:
    """Figures a store adds to its lag rows (Redis: delivered, pending)."""
    base = {f.name for f in dataclasses.fields(LagRow)}
    return {f.name: getattr(row, f.name) for f in dataclasses.fields(row) if f.name not in base}


class Sampler:
    """Samples a blackboard's offsets and keeps windows of them.

    Args:
        board: the blackboard to watch.
        settings: interval, window length and lag threshold.
    """

    def __init__(self, board: Blackboard, settings: DashboardSettings) -> None:
        self.board = board
        self.settings = settings
        self._lock = threading.Lock()
        self._windows = LagWindows(settings.window)  # health: scheduler/backpressure.py
        self._extras: dict[Key, dict[str, Any]] = {}
        self._group_lag: dict[str, deque[tuple[float, int]]] = {}
        self._topic_end: dict[str, deque[tuple[float, int]]] = {}
        self._topic_parts: dict[str, int] = {}
        self._agents: list[dict[str, Any]] = []
        self._dlq_depth = 0
        self._dlq_at = float("-inf")
        self._last = 0.0
        self._listeners: list[Callable[[], None]] = []
        self.ticks = 0
        self.closed = False

    # -- sampling -------------------------------------------------------------------------
    def sample(self) -> None:
        """Read the store once and append to every window (blocking: run it in a thread)."""
        now = time.time()
        head = self.board.topics.prefix + "."
        rows = self.board.lag()  # the blackboard's own groups
        topics = [
            t
            for t in self.board.store.list_topics()
            if self.board.topics.type_of(t) is not None
            or (t.startswith(head) and t.endswith(DLQ_SUFFIX))
        ]
        ends = self.board.store.end_offsets(topics)
        agents = [dataclasses.asdict(s) for s in read_status(self.board)]
        depth = self._dlq_depth
        if now - self._dlq_at >= DLQ_REFRESH_S:
            depth = len(DeadLetters(self.board).entries())
            self._dlq_at = now
        window = self.settings.window
        with self._lock:
            self._windows.add(rows, now)
            lag: dict[str, int] = {}
            for r in rows:
                self._extras[r.group, r.topic, r.partition] = _extras(r)
                lag[r.group] = lag.get(r.group, 0) + r.lag
            for group, total in lag.items():
                self._group_lag.setdefault(group, deque(maxlen=HISTORY)).append((now, total))
            sums: dict[str, int] = {}
            parts: dict[str, int] = {}
            for tp, end in ends.items():
                sums[tp.topic] = sums.get(tp.topic, 0) + end
                parts[tp.topic] = parts.get(tp.topic, 0) + 1
            for topic, total in sums.items():
                self._topic_end.setdefault(topic, deque(maxlen=window)).append((now, total))
            self._topic_parts = parts
            self._agents = agents
            self._dlq_depth = depth
            self._last = now
            self.ticks += 1
            listeners = list(self._listeners)
        for notify in listeners:
            notify()

    async def run(self) -> None:
        """Sample every interval until cancelled (errors are logged, sampling goes on)."""
        while True:
            try:
                await asyncio.to_thread(self.sample)
            except Exception as exc:  # a store hiccup must not end the dashboard
                log.warning("sampling failed", error=str(exc), error_type=type(exc).__name__)
            await asyncio.sleep(self.settings.sample_interval_s)

    def close(self) -> None:
        """Tell event streams to end (the server is stopping)."""
        with self._lock:
            self.closed = True
            listeners = list(self._listeners)
        for notify in listeners:
            notify()

    def subscribe(self, notify: Callable[[], None]) -> Callable[[], None]:
        """Call ``notify`` (from the sampling thread) after each sample; returns the
        unsubscribe function."""
        with self._lock:
            self._listeners.append(notify)

        def unsubscribe() -> None:
            with self._lock:
                if notify in self._listeners:
                    self._listeners.remove(notify)

        return unsubscribe

    # -- views ----------------------------------------------------------------------------
    def _group_rows(self, group: str) -> list[dict[str, Any]]:
        return [
            {**dataclasses.asdict(r), **self._extras.get((group, r.topic, r.partition), {})}
            for r in self._windows.rows(group)
        ]

    def _group_summary(self, group: str) -> dict[str, Any]:
        health = self._windows.health(group, self.settings.lag_threshold)
        return {
            "group": group,
            "status": health.status,
            "total_lag": health.total_lag,
            "partitions": health.partitions,
            "throughput": health.throughput,
            "desired_workers": health.desired_workers,
            "lag_threshold": health.lag_threshold,
        }

    def groups(self) -> list[str]:
        """The groups seen so far."""
        with self._lock:
            return self._windows.groups()

    def _throttled(self) -> list[dict[str, Any]]:
        """Every agent's publish throttle that is not normal, per topic (lock held)."""
        return [
            {"agent": a["agent"], "slot": a["slot"], "topic": t, "updated": a["updated"], **f}
            for a in self._agents
            for t, f in sorted(a.get("throttle", {}).items())
            if f.get("bb.throttle.state") != "normal"
        ]

    def overview(self) -> dict[str, Any]:
        """Every group's health and lag, total lag and throughput, DLQ depth, agent status and
        throttled publishers (``backpressure.throttled``; per group ``throttling``)."""
        with self._lock:
            groups = [self._group_summary(g) for g in self._windows.groups()]
            agents = list(self._agents)
            throttled = self._throttled()
            for g in groups:  # publishers whose slowest consumer group is this one
                g["throttling"] = sum(t.get("bb.throttle.group") == g["group"] for t in throttled)
            depth = self._dlq_depth
            last = self._last
            produced = sum(
                rate(list(w)) for t, w in self._topic_end.items() if not t.endswith(DLQ_SUFFIX)
            )
        return {
            "sampled_at": last,
            "groups": groups,
            "total_lag": sum(g["total_lag"] for g in groups),
            "throughput": sum(g["throughput"] for g in groups),
            "produced_per_s": produced,
            "dlq_depth": depth,
            "agents": agents,
            "backpressure": {
                "open_circuits": [a for a in agents if a["breaker"] in ("open", "half_open")],
                "throttled": throttled,
                "groups_behind": [
                    g["group"] for g in groups if g["status"] != "OK" or g["desired_workers"] > 1
                ],
            },
        }

    def group(self, group: str) -> dict[str, Any] | None:
        """One group: per-partition table, health, desired workers, its lag history and the
        publishers throttled on the topics it consumes."""
        with self._lock:
            if group not in self._windows.groups():
                return None
            topics = {k[1] for k in self._windows.partitions if k[0] == group}
            return {
                **self._group_summary(group),
                "rows": self._group_rows(group),
                "history": [[ts, lag] for ts, lag in self._group_lag.get(group, ())],
                "agents": [a for a in self._agents if a["group"] == group],
                # Publishers throttled on the topics this group consumes (its lag may be the
                # cause: ``bb.throttle.group`` names the slowest group at their last sample).
                "throttled": [t for t in self._throttled() if t["topic"] in topics],
            }

    def topics(self) -> list[dict[str, Any]]:
        """Every topic: partitions, end offset total and records/s appended."""
        with self._lock:
            return [
                {
                    "topic": topic,
                    "dlq": topic.endswith(DLQ_SUFFIX),
                    "partitions": self._topic_parts.get(topic, 0),
                    "end_offset": window[-1][1],
                    "rate": rate(list(window)),
                }
                for topic, window in sorted(self._topic_end.items())
            ]

    def event(self) -> dict[str, Any]:
        """What one server-sent event carries: the overview and each group's latest lag."""
        doc = self.overview()
        with self._lock:
            doc["lag"] = {
                g: {"ts": h[-1][0], "lag": h[-1][1], "rows": self._group_rows(g)}
                for g, h in self._group_lag.items()
                if h
            }
            doc["topics_rate"] = {t: rate(list(w)) for t, w in self._topic_end.items()}
        return doc
