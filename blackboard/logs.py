"""Logging: structlog key/value events on stderr (JSON lines when stderr is not a terminal).

stdout is for data only. Our modules get loggers from :func:`get_logger`, which sets up this
configuration on first use unless the application configured structlog itself (at ``info`` if
``BLACKBOARD_LOG_LEVEL`` is not a level; :func:`configure_logging`, which the CLI calls at
start-up, reports that in one line). While a span is current (a handler running with tracing
on), every line carries its ``trace_id`` and ``span_id`` and the ``agent`` and ``artifact_id``
it processes.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from blackboard.envsettings import EnvSettings
from blackboard.errors import ConfigError
from blackboard.spancontext import add_trace_ids

Level = Literal["debug", "info", "warning", "error"]
_LEVELS: dict[Level, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class LogSettings(EnvSettings):
    """The log level from ``BLACKBOARD_LOG_LEVEL`` (any case); ``--log-level`` wins."""

    model_config = SettingsConfigDict(env_prefix="BLACKBOARD_")
    what = "log setting"

    log_level: Level = Field(default="info", description="least severe events logged")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


def configure_logging(level: str | None = None, *, json: bool | None = None) -> None:
    """Send structlog events to stderr.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error`` (default ``BLACKBOARD_LOG_LEVEL``
            or ``info``).
        json: JSON lines (default: when stderr is not a terminal).

    Raises:
        ConfigError: ``level`` or ``BLACKBOARD_LOG_LEVEL`` is not one of the four.
    """
    name = LogSettings.from_env(log_level=level).log_level
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_trace_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[name]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    """A structlog logger named ``name``, logging to stderr unless structlog was configured."""
    if not structlog.is_configured():
        try:
            configure_logging()
        except ConfigError:  # often on import: configure_logging() itself reports it (the CLI)
            configure_logging("info")
    return structlog.get_logger(name)
