"""Topic names (docs/DESIGN.md §2): ``<prefix>.<type>``, ``<topic>.dlq``,
``<prefix>.<agent>.state``, and the blackboard's own bookkeeping topics ``<prefix>._<name>``
(agent status, DLQ dispositions), which hold no artifacts."""

from __future__ import annotations

from dataclasses import dataclass

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The topic naming of one blackboard."""

    prefix: str = "bb"

    def for_type(self, type_name: str) -> str:
        """The topic of artifact type ``type_name``."""
        return f"{self.prefix}.{type_name}"

    def type_of(self, topic: str) -> str | None:
        """The artifact type a topic holds, or None for DLQ, state and foreign topics."""
        head = self.prefix + "."
        if not topic.startswith(head) or topic.endswith(DLQ_SUFFIX) or topic.endswith(".state"):
            return None
        name = topic[len(head) :]
        return None if name.startswith("_") else name

    @staticmethod
    def dlq(topic: str) -> str:
        """The dead-letter topic of ``topic``."""
        return topic + DLQ_SUFFIX

    def group(self, agent: str) -> str:
        """The consumer group of ``agent``: ``<prefix>.<agent>``, so blackboards sharing a
        cluster never rebalance each other's agents."""
        return f"{self.prefix}.{agent}"

    def status(self) -> str:
        """The compacted topic where runners publish their status (circuit breaker state)."""
        return f"{self.prefix}._status"

    def dlq_dispositions(self) -> str:
        """The compacted topic recording which dead letters were replayed or purged."""
        return f"{self.prefix}._dlq_dispositions"

    def state(self, agent: str) -> str:
        """The compacted state changelog topic of ``agent``."""
        return f"{self.prefix}.{agent}.state"
