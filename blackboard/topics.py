"""Topic names (DESIGN.md §2): ``<prefix>.<type>``, ``<topic>.dlq``, ``<prefix>.<agent>.state``."""

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
        return topic[len(head) :]

    @staticmethod
    def dlq(topic: str) -> str:
        """The dead-letter topic of ``topic``."""
        return topic + DLQ_SUFFIX

    def group(self, agent: str) -> str:
        """The consumer group of ``agent``: ``<prefix>.<agent>``, so blackboards sharing a
        cluster never rebalance each other's agents."""
        return f"{self.prefix}.{agent}"

    def state(self, agent: str) -> str:
        """The compacted state changelog topic of ``agent``."""
        return f"{self.prefix}.{agent}.state"
