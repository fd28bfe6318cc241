"""The layout of spans in memory and in DuckDB: one row per span, links as rows, runs, segments.

A span travels from the hot path to the exporter as a plain tuple (a *span row*) whose fields
are the columns below in order, plus its links: building a tuple costs a fraction of building an
OpenTelemetry SDK span (which validates every attribute under a lock), and the exporter turns a
batch of rows into Arrow columns with one transposition. The OpenTelemetry attributes of
docs/DESIGN.md §6 are columns of their own (:data:`ATTRIBUTE_COLUMNS`), so analyses need no JSON;
anything else a span carries goes to the ``attributes`` JSON column.

This module imports neither DuckDB nor Arrow: the runner imports it on every start.
"""

from __future__ import annotations

from typing import Any, Final

#: A span as the hot path hands it to the exporter: the values of :data:`SPAN_FIELDS` in order,
#: then the links as a tuple of ``(trace_id, span_id)`` pairs (or None).
SpanRow = tuple[Any, ...]

#: (column, DuckDB type) of a span row, in row order.
SPAN_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("trace_id", "VARCHAR"),  # 32 lowercase hex digits
    ("span_id", "VARCHAR"),  # 16 lowercase hex digits
    ("parent_span_id", "VARCHAR"),
    ("name", "VARCHAR"),
    ("kind", "VARCHAR"),  # PRODUCER, CONSUMER, CLIENT, INTERNAL, SERVER
    ("start_ns", "BIGINT"),  # epoch nanoseconds
    ("end_ns", "BIGINT"),
    ("status", "VARCHAR"),  # OK, ERROR, UNSET
    ("status_message", "VARCHAR"),
    ("operation", "VARCHAR"),  # messaging.operation.type: send, receive, process, settle;
    # chat for a model call (gen_ai.operation.name)
    ("system", "VARCHAR"),  # messaging.system: kafka, redis, memory
    ("destination", "VARCHAR"),  # messaging.destination.name (the topic)
    ("partition_id", "INTEGER"),  # messaging.destination.partition.id
    ("record_offset", "BIGINT"),  # messaging.kafka.offset
    ("consumer_group", "VARCHAR"),  # messaging.consumer.group.name
    ("correlation_id", "VARCHAR"),  # messaging.message.conversation_id
    ("artifact_id", "VARCHAR"),  # bb.artifact.id
    ("artifact_type", "VARCHAR"),  # bb.artifact.type
    ("attempt", "INTEGER"),  # bb.attempt
    ("policy_decision", "VARCHAR"),  # bb.policy.decision
    ("queue_wait_ms", "DOUBLE"),  # bb.queue_wait_ms: poll -> handler start
    ("tenant", "VARCHAR"),  # bb.tenant
    ("agent", "VARCHAR"),  # gen_ai.agent.name
    ("outcome", "VARCHAR"),  # bb.outcome: ok, retried, dead_letter
    ("error_stage", "VARCHAR"),  # bb.error.stage: process, timeout, produce, deserialize, ...
    ("error_type", "VARCHAR"),  # error.type: the exception's class
    ("attributes", "JSON"),  # every other attribute, as a JSON object (or NULL)
)
SPAN_COLUMNS: Final[tuple[str, ...]] = tuple(name for name, _ in SPAN_FIELDS)
#: Index of the links in a span row (after the columns).
LINKS: Final[int] = len(SPAN_FIELDS)
ROW_LENGTH: Final[int] = LINKS + 1
_INDEX = {name: i for i, name in enumerate(SPAN_COLUMNS)}
TRACE_ID, SPAN_ID, PARENT_SPAN_ID = _INDEX["trace_id"], _INDEX["span_id"], _INDEX["parent_span_id"]
NAME, KIND, START_NS, END_NS = _INDEX["name"], _INDEX["kind"], _INDEX["start_ns"], _INDEX["end_ns"]
STATUS, STATUS_MESSAGE, ATTRIBUTES = (
    _INDEX["status"],
    _INDEX["status_message"],
    _INDEX["attributes"],
)
OPERATION: Final[int] = _INDEX["operation"]
#: The ``operation`` of a model call's span (``gen_ai.operation.name``; not a messaging one).
CHAT: Final = "chat"

#: OpenTelemetry attribute name -> column (docs/DESIGN.md §6; ours carry the ``bb.`` prefix).
ATTRIBUTE_COLUMNS: Final[dict[str, str]] = {
    "messaging.operation.type": "operation",
    "messaging.system": "system",
    "messaging.destination.name": "destination",
    "messaging.destination.partition.id": "partition_id",
    "messaging.kafka.offset": "record_offset",
    "messaging.consumer.group.name": "consumer_group",
    "messaging.message.conversation_id": "correlation_id",
    "bb.artifact.id": "artifact_id",
    "bb.artifact.type": "artifact_type",
    "bb.attempt": "attempt",
    "bb.policy.decision": "policy_decision",
    "bb.queue_wait_ms": "queue_wait_ms",
    "bb.tenant": "tenant",
    "gen_ai.agent.name": "agent",
    "bb.outcome": "outcome",
    "bb.error.stage": "error_stage",
    "error.type": "error_type",
}
#: (row index, attribute name) of every attribute column.
ATTRIBUTE_INDEX: Final[tuple[tuple[int, str], ...]] = tuple(
    (_INDEX[column], attr) for attr, column in ATTRIBUTE_COLUMNS.items()
)

#: The tables of a merged run file (:func:`observability.segments.merge_run`). ``worker``
#: names the process (its segment); ``duration_ms`` is computed on load. A segment's ``state``
#: is ``closed``, ``open`` (its process still writes it: the run is partial) or ``died`` (never
#: closed: its last counts stand).
DDL: Final[tuple[str, ...]] = (
    """CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR, scenario VARCHAR, policy VARCHAR, seed BIGINT, store VARCHAR,
        git_sha VARCHAR, config JSON, versions JSON, started_at TIMESTAMP, finished_at TIMESTAMP,
        spans_ended BIGINT, spans_written BIGINT, spans_dropped BIGINT, spans_failed BIGINT,
        spans_loaded BIGINT, segments INTEGER, segments_open INTEGER, segments_died INTEGER)""",
    """CREATE TABLE IF NOT EXISTS segments (
        run_id VARCHAR, segment VARCHAR, host VARCHAR, pid INTEGER, started_at TIMESTAMP,
        finished_at TIMESTAMP, state VARCHAR, spans_ended BIGINT, spans_written BIGINT,
        spans_dropped BIGINT, spans_failed BIGINT, spans_loaded BIGINT, truncated BOOLEAN)""",
    "CREATE TABLE IF NOT EXISTS spans (run_id VARCHAR, worker VARCHAR, "
    + ", ".join(f"{name} {kind}" for name, kind in SPAN_FIELDS)
    + ", duration_ms DOUBLE)",
    """CREATE TABLE IF NOT EXISTS links (
        run_id VARCHAR, trace_id VARCHAR, span_id VARCHAR, linked_trace_id VARCHAR,
        linked_span_id VARCHAR)""",
)
TABLES: Final[tuple[str, ...]] = ("runs", "segments", "spans", "links")


def format_traceparent(trace_id: str, span_id: str) -> str:
    """The W3C ``traceparent`` of a sampled span."""
    return f"00-{trace_id}-{span_id}-01"


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of a W3C ``traceparent`` header, or None if absent or not of
    its shape (a record from a plain producer: its process span starts a trace of its own).
    Only the shape is checked, on the hot path; :func:`valid_ids` checks the digits."""
    if value is None or len(value) != 55 or value[2] != "-" or value[35] != "-":
        return None
    return value[3:35], value[36:52]


def valid_ids(trace_id: str, span_id: str) -> tuple[int, int] | None:
    """The ids as integers, or None unless both are non-zero hex of the right length."""
    try:
        t, s = int(trace_id, 16), int(span_id, 16)
    except ValueError:
        return None
    if not t or not s or len(trace_id) != 32 or len(span_id) != 16:
        return None
    return t, s
