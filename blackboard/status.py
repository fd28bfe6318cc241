"""Runner status the operator tools read: each runner publishes its circuit breaker's state and
its backpressure state per published topic to the compacted topic ``<prefix>._status`` (key
``<agent>/<slot>``) when they change, so ``blackboard lag`` and the dashboard show them
whatever process they run in."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from blackboard.records import OutgoingRecord, TopicPartition

if TYPE_CHECKING:
    from blackboard.blackboard import Blackboard


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """One runner's last reported status.

    Attributes:
        breaker: the circuit's state (``closed`` / ``open`` / ``half_open``; empty: the agent
            has no breaker).
        throttle: per published topic, the backpressure figures (``bb.throttle.state``
            normal / throttled / paused, ``.rate``, ``.lag``, ``.expected_wait_s``, and
            ``.group``: the slowest consumer group at the last sample, or None); empty while
            backpressure is off.
    """

    agent: str
    slot: str
    group: str
    breaker: str
    consecutive_failures: int = 0
    cooldown_s: float = 0.0
    opens: int = 0
    updated: float = field(default_factory=time.time)
    throttle: dict[str, dict[str, Any]] = field(default_factory=dict)


def publish_status(board: Blackboard, status: AgentStatus) -> None:
    """Append ``status`` to the status topic (created on first use: one compacted partition)."""
    topic = board.topics.status()
    board.store.ensure_topics([topic], 1, compacted=True)
    board.store.publish(
        [
            OutgoingRecord(
                topic,
                f"{status.agent}/{status.slot}".encode(),
                orjson.dumps(asdict(status)),
                partition=0,
            )
        ]
    )


def read_status(board: Blackboard) -> list[AgentStatus]:
    """The latest status of every runner that ever reported one, sorted by agent and slot."""
    topic = board.topics.status()
    if board.store.topic_partitions(topic) is None:
        return []
    latest: dict[bytes | None, AgentStatus] = {}
    offset = 0
    tp = TopicPartition(topic, 0)
    while True:
        chunk = board.store.read(tp, offset, 1000)
        if not chunk:
            break
        for rec in chunk:
            if rec.value is not None:
                latest[rec.key] = AgentStatus(**orjson.loads(rec.value))
        offset = chunk[-1].offset + 1
    return sorted(latest.values(), key=lambda s: (s.agent, s.slot))
