"""Logging: structlog key/value events on stderr (JSON lines when stderr is not a terminal).

stdout is for data only. Our modules get loggers from :func:`get_logger`, which sets up this
configuration on first use unless the application configured structlog itself. While a span is
current (a handler running with tracing on), every line carries its ``trace_id`` and
``span_id`` and the ``agent`` and ``artifact_id`` it processes.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

from blackboard.spancontext import add_trace_ids

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str | None = None, *, json: bool | None = None) -> None:
    """Send structlog events to stderr.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error`` (default ``BLACKBOARD_LOG_LEVEL``
            or ``info``).
        json: JSON lines (default: when stderr is not a terminal).
    """
    name = (level or os.environ.get("BLACKBOARD_LOG_LEVEL") or "info").lower()
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
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    """A structlog logger named ``name``, logging to stderr unless structlog was configured."""
    if not structlog.is_configured():
        configure_logging()
    return structlog.get_logger(name)
