"""The span that is current in this task or thread, and the log processor that names it.

Part of the core, so :mod:`blackboard.logs` can add :func:`add_trace_ids` to every log line;
:mod:`observability.tracing` sets the current span, and nothing here imports it.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, Protocol


class CurrentSpan(Protocol):
    """What a log line needs from the current span."""

    trace_id: str
    span_id: str
    agent: str | None
    artifact_id: str | None


#: The process span running in this task (None outside handlers or when tracing is off).
current_span: ContextVar[CurrentSpan | None] = ContextVar("blackboard_current_span", default=None)


def add_trace_ids(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: add ``trace_id``, ``span_id``, ``agent`` and ``artifact_id`` of the
    current span to the event (values the call itself bound win). A no-op without a span, so
    binding costs nothing on the hot path: it happens only when something logs."""
    span = current_span.get()
    if span is not None:
        event.setdefault("trace_id", span.trace_id)
        event.setdefault("span_id", span.span_id)
        if span.agent is not None:
            event.setdefault("agent", span.agent)
        if span.artifact_id is not None:
            event.setdefault("artifact_id", span.artifact_id)
    return event
