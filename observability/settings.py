"""Tracing settings from the environment: which run a process traces into and where
(:class:`RunSettings`), and how the span exporter queues and batches (:class:`TraceSettings`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from blackboard.envsettings import EnvSettings


class RunSettings(EnvSettings):
    """Where traced runs go and what names them: :meth:`from_env` reads ``BLACKBOARD_TRACES``,
    ``BLACKBOARD_RUN_ID`` and ``BLACKBOARD_GIT_SHA``; explicit values (``--traces``,
    ``--run-id``) win."""

    model_config = SettingsConfigDict(env_prefix="BLACKBOARD_")
    what = "run setting"

    traces: Path | None = Field(
        default=None,
        description="traces directory: `demo` and `worker` trace into it, `traces` and the "
        "dashboard read it (unset: no tracing; `traces` reads `./traces`)",
    )
    run_id: str | None = Field(
        default=None,
        description="the run a process traces under, shared by workers started apart "
        "(unset: a new id per process)",
    )
    git_sha: str | None = Field(
        default=None,
        description="the commit a run records (unset: `git describe` of the source tree)",
    )


class TraceSettings(EnvSettings):
    """Queue and batch sizes of the span exporter.

    The queue must hold what is ended while one batch is written: at ~40,000 spans/s (the
    Kafka benchmark, five spans per input) and a write every ``flush_interval_s``, 100,000
    spans leave room for a DuckDB write that stalls for over two seconds. A span that finds the
    queue full is dropped and counted, never lost silently.
    """

    model_config = SettingsConfigDict(env_prefix="BLACKBOARD_TRACES_")
    what = "trace setting"

    max_queue: int = Field(
        default=100_000,
        ge=1,
        validation_alias="BLACKBOARD_TRACES_QUEUE",
        description="spans waiting to be written",
    )
    batch_size: int = Field(
        default=8192,
        ge=1,
        validation_alias="BLACKBOARD_TRACES_BATCH",
        description="spans per Arrow batch and INSERT",
    )
    flush_interval_s: float = Field(
        default=0.25,
        gt=0,
        validation_alias="BLACKBOARD_TRACES_FLUSH_S",
        description="longest time a span waits for its batch",
    )
