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
from blackboard.dashboard.health import (
    Sample,
    Status,
    desired_workers,
    moved,
    partition_status,
    rate,
    worst,
)
from blackboard.dashboard.settings import DashboardSettings
from blackboard.deadletters import DeadLetters
from blackboard.logs import get_logger
from blackboard.status import read_status
from blackboard.store import LagRow
from blackboard.topics import DLQ_SUFFIX

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
        self._partitions: dict[Key, deque[Sample]] = {}
        self._extras: dict[Key, dict[str, Any]] = {}
        self._group_lag: dict[str, deque[tuple[float, int]]] = {}
        self._group_done: dict[str, deque[tuple[float, int]]] = {}
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
        rows = [r for r in self.board.lag() if r.group.startswith(head)]
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
            lag: dict[str, int] = {}
            done: dict[str, int] = {}
            for r in rows:
                key = (r.group, r.topic, r.partition)
                self._partitions.setdefault(key, deque(maxlen=window)).append(
                    Sample(now, r.end_offset, r.committed_offset)
                )
                self._extras[key] = _extras(r)
                lag[r.group] = lag.get(r.group, 0) + r.lag
                done[r.group] = done.get(r.group, 0) + (r.committed_offset or 0)
            for group, total in lag.items():
                self._group_lag.setdefault(group, deque(maxlen=HISTORY)).append((now, total))
                self._group_done.setdefault(group, deque(maxlen=window)).append((now, done[group]))
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
        windows = sorted((k, list(w)) for k, w in self._partitions.items() if k[0] == group)
        active = any(moved(w) for _, w in windows)
        out = []
        for (g, topic, partition), window in windows:
            last = window[-1]
            out.append(
                {
                    "topic": topic,
                    "partition": partition,
                    "end_offset": last.end,
                    "committed_offset": last.committed,
                    "lag": last.lag,
                    "status": partition_status(window, active),
                    **self._extras.get((g, topic, partition), {}),
                }
            )
        return out

    def _group_summary(self, group: str) -> dict[str, Any]:
        rows = self._group_rows(group)
        total = sum(int(r["lag"]) for r in rows)
        per_topic: dict[str, int] = {}
        for r in rows:
            per_topic[r["topic"]] = per_topic.get(r["topic"], 0) + 1
        partitions = max(per_topic.values(), default=0)
        status: Status = worst(r["status"] for r in rows)
        return {
            "group": group,
            "status": status,
            "total_lag": total,
            "partitions": partitions,
            "throughput": rate(list(self._group_done.get(group, ()))),
            "desired_workers": desired_workers(total, self.settings.lag_threshold, partitions),
            "lag_threshold": self.settings.lag_threshold,
        }

    def groups(self) -> list[str]:
        """The groups seen so far."""
        with self._lock:
            return sorted({g for g, _, _ in self._partitions})

    def overview(self) -> dict[str, Any]:
        """Every group's health and lag, total lag and throughput, DLQ depth, agent status."""
        with self._lock:
            groups = [self._group_summary(g) for g in sorted({k[0] for k in self._partitions})]
            agents = list(self._agents)
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
                "open_circuits": [a for a in agents if a["breaker"] != "closed"],
                "groups_behind": [
                    g["group"] for g in groups if g["status"] != "OK" or g["desired_workers"] > 1
                ],
            },
        }

    def group(self, group: str) -> dict[str, Any] | None:
        """One group: per-partition table, health, desired workers and its lag history."""
        with self._lock:
            if not any(k[0] == group for k in self._partitions):
                return None
            return {
                **self._group_summary(group),
                "rows": self._group_rows(group),
                "history": [[ts, lag] for ts, lag in self._group_lag.get(group, ())],
                "agents": [a for a in self._agents if a["group"] == group],
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
