"""How a runner polls and commits: :class:`RunnerSettings`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from blackboard.store import MAX_RECORD_BYTES


class RunnerSettings(BaseModel):
    """How a runner polls and commits. Defaults suit both the embedded store and Kafka."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    commit_every: int = Field(default=100, ge=1, description="commit after this many finished")
    commit_interval_ms: float = Field(default=100.0, gt=0, description="or after this long")
    poll_batch: int = Field(default=500, ge=1, description="most records one poll returns")
    max_buffered: int = Field(
        default=2000, ge=1, description="records read but not finished before fetching pauses"
    )
    max_offset_window: int = Field(
        default=1000,
        ge=10,
        description="how far a partition may run ahead of its lowest unfinished",
    )
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="time in-flight handlers get to finish"
    )
    idle_poll_s: float = Field(default=1.0, gt=0, description="longest wait in one poll")
    max_record_bytes: int = Field(
        default=MAX_RECORD_BYTES - 50_000,
        ge=1024,
        description="largest output value (headroom for headers)",
    )
