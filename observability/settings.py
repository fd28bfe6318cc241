"""How the span exporter queues and batches (pydantic settings, from the environment)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from blackboard.envsettings import settings_from_env


class TraceSettings(BaseModel):
    """Queue and batch sizes of the span exporter.

    The queue must hold what is ended while one batch is written: at ~40,000 spans/s (the
    Kafka benchmark, five spans per input) and a write every ``flush_interval_s``, 100,000
    spans leave room for a DuckDB write that stalls for over two seconds. A span that finds the
    queue full is dropped and counted, never lost silently.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_queue: int = Field(default=100_000, ge=1, description="spans waiting to be written")
    batch_size: int = Field(default=8192, ge=1, description="spans per Arrow batch and INSERT")
    flush_interval_s: float = Field(
        default=0.25, gt=0, description="longest time a span waits for its batch"
    )

    @classmethod
    def from_env(cls, **overrides: Any) -> TraceSettings:
        """Settings from ``BLACKBOARD_TRACES_QUEUE``, ``BLACKBOARD_TRACES_BATCH`` and
        ``BLACKBOARD_TRACES_FLUSH_S``, explicit non-None ``overrides`` winning.

        Raises:
            ConfigError: a value is invalid (one line naming it).
        """
        env = {
            "max_queue": "BLACKBOARD_TRACES_QUEUE",
            "batch_size": "BLACKBOARD_TRACES_BATCH",
            "flush_interval_s": "BLACKBOARD_TRACES_FLUSH_S",
        }
        return settings_from_env(cls, env, overrides, "trace setting")
