"""What a run is: its id and the facts that make two runs comparable (``runs`` table)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from blackboard.errors import ConfigError
from blackboard.redact import redact_url
from observability.settings import RunSettings

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Distributions whose versions a run records (those installed).
VERSIONED = (
    "kafka-blackboard",
    "pydantic",
    "duckdb",
    "pyarrow",
    "opentelemetry-sdk",
    "confluent-kafka",
    "redis",
)


def new_run_id() -> str:
    """A fresh run id: UTC time to the second and a random suffix (sorts by start time)."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{os.urandom(3).hex()}"


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it can name a directory.

    Raises:
        ConfigError: it has characters other than letters, digits, ``.``, ``_`` and ``-``.
    """
    if not _RUN_ID.match(run_id):
        raise ConfigError(
            f"invalid run id {run_id!r}: use letters, digits, '.', '_' and '-' (at most 128)"
        )
    return run_id


def git_sha() -> str | None:
    """The source tree's commit (``-dirty`` when it has changes), or None outside a checkout.
    ``BLACKBOARD_GIT_SHA`` wins (for installed copies whose checkout is elsewhere).

    Raises:
        ConfigError: a run variable is invalid (:class:`~observability.settings.RunSettings`).
    """
    given = RunSettings.from_env().git_sha
    if given:
        return given
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def versions() -> dict[str, str]:
    """Python's version and those of the installed :data:`VERSIONED` distributions."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run: every process that traces into it shares the id (``BLACKBOARD_RUN_ID`` or
    ``--run-id`` for workers started apart).

    Attributes:
        run_id: the run's name; also its directory under the traces directory.
        scenario: what ran (the demo, an app's name, a benchmark).
        policy: the admission policy (``fifo`` until the scheduler brings others).
        seed: the seed of simulated latencies and data, if any.
        store: the store URL, its password masked (:func:`~blackboard.redact.redact_url`).
        config: settings worth comparing runs by.
        git_sha: the source's commit.
        versions: Python and library versions.
        started_at: when this process started tracing (UTC).
    """

    run_id: str
    scenario: str = "adhoc"
    policy: str = "fifo"
    seed: int | None = None
    store: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    git_sha: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def create(
        cls,
        *,
        scenario: str,
        policy: str = "fifo",
        seed: int | None = None,
        store: str | None = None,
        config: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> RunInfo:
        """A run of this source tree: id from ``run_id``, else ``BLACKBOARD_RUN_ID``, else new;
        git commit and versions filled in.

        Raises:
            ConfigError: the run id cannot name a directory.
        """
        rid = check_run_id(run_id or RunSettings.from_env().run_id or new_run_id())
        return cls(
            run_id=rid,
            scenario=scenario,
            policy=policy,
            seed=seed,
            store=None if store is None else redact_url(store),
            config=dict(config or {}),
            git_sha=git_sha(),
            versions=versions(),
        )
