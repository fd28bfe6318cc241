"""Where our span rows meet the OpenTelemetry SDK.

- One ``TracerProvider`` per process, installed as the global provider the first time tracing
  starts: spans that handlers make with the OpenTelemetry API reach the active run's exporter
  (and nest under the process span, which :func:`attach_span` makes current).
- Rows to ``ReadableSpan`` and back, so SDK exporters (OTLP) and SDK spans (handlers') meet
  the same pipeline.
- The OTLP exporter, only when ``OTEL_EXPORTER_OTLP_*`` variables are set.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from blackboard.errors import MissingDependencyError
from observability.runs import RunInfo
from observability.schema import (
    ATTRIBUTE_INDEX,
    ATTRIBUTES,
    CHAT,
    END_NS,
    KIND,
    LINKS,
    NAME,
    OPERATION,
    PARENT_SPAN_ID,
    ROW_LENGTH,
    SPAN_ID,
    START_NS,
    STATUS,
    STATUS_MESSAGE,
    TRACE_ID,
    SpanRow,
    valid_ids,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_PARTITION = "messaging.destination.partition.id"
_ATTRIBUTE_POSITION = {attr: i for i, attr in ATTRIBUTE_INDEX}
_provider: TracerProvider | None = None


def resource(run: RunInfo, segment: str) -> Resource:
    """The resource of this process's spans: service, run, segment, host and pid."""
    return Resource.create(
        {
            "service.name": "kafka-blackboard",
            "service.instance.id": segment,
            "bb.run.id": run.run_id,
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
        }
    )


# -- the current span for the OpenTelemetry API ------------------------------------------------


def attach_span(trace_id: str, span_id: str) -> object | None:
    """Make ``(trace_id, span_id)`` the OpenTelemetry API's current span; a token for
    :func:`detach` (None if the ids are not valid hex: then nothing is attached)."""
    ids = valid_ids(trace_id, span_id)
    if ids is None:
        return None
    ctx = SpanContext(ids[0], ids[1], False, _SAMPLED)
    return otel_context.attach(otel_trace.set_span_in_context(NonRecordingSpan(ctx)))


def detach(token: object) -> None:
    """Undo :func:`attach_span`."""
    otel_context.detach(token)  # type: ignore[arg-type]  # the Token attach_span returned


def current_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of the OpenTelemetry API's current span, if it has a valid one."""
    ctx = otel_trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


# -- the provider for spans made through the API -------------------------------------------------


class _Forward(SpanProcessor):
    """Sends each SDK span that ends to the active run's exporter, as a row."""

    def __init__(self, sink: Callable[[], Callable[[SpanRow], None] | None]) -> None:
        self._sink = sink

    def on_end(self, span: ReadableSpan) -> None:
        sink = self._sink()
        if sink is not None:
            sink(readable_to_row(span))


def install_provider(sink: Callable[[], Callable[[SpanRow], None] | None]) -> TracerProvider:
    """The process's TracerProvider, created and made global on first call (the API allows one
    global provider per process); its spans go to whatever ``sink()`` returns when they end."""
    global _provider
    if _provider is None:
        _provider = TracerProvider(resource=Resource.create({"service.name": "kafka-blackboard"}))
        _provider.add_span_processor(_Forward(sink))
        otel_trace.set_tracer_provider(_provider)
    return _provider


# -- OTLP --------------------------------------------------------------------------------------


def otlp_wanted() -> bool:
    """Whether any ``OTEL_EXPORTER_OTLP_*`` variable is set (non-empty)."""
    return any(k.startswith("OTEL_EXPORTER_OTLP_") and v for k, v in os.environ.items())


def otlp_exporter_from_env() -> SpanExporter | None:
    """The OTLP/HTTP span exporter configured by the standard ``OTEL_EXPORTER_OTLP_*``
    variables, or None when none is set.

    Raises:
        MissingDependencyError: a variable is set but the exporter package is not installed.
    """
    if not otlp_wanted():
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise MissingDependencyError(
            "OTEL_EXPORTER_OTLP_* is set, and OTLP export needs the "
            "'opentelemetry-exporter-otlp-proto-http' package: "
            "pip install 'kafka-blackboard[otlp]'"
        ) from exc
    exporter: SpanExporter = OTLPSpanExporter()
    return exporter


# -- rows and SDK spans -------------------------------------------------------------------------


def readable_to_row(span: ReadableSpan) -> SpanRow:
    """The row of an SDK span: known attributes in their columns, the rest as JSON."""
    ctx = span.context
    trace_id = f"{ctx.trace_id:032x}" if ctx is not None else "0" * 32
    parent = span.parent
    attrs = dict(span.attributes or {})
    row: list[Any] = [None] * ROW_LENGTH
    row[TRACE_ID] = trace_id
    row[SPAN_ID] = f"{ctx.span_id:016x}" if ctx is not None else "0" * 16
    row[PARENT_SPAN_ID] = f"{parent.span_id:016x}" if parent is not None else None
    row[NAME] = span.name
    row[KIND] = span.kind.name
    row[START_NS] = span.start_time or 0
    row[END_NS] = span.end_time or span.start_time or 0
    row[STATUS] = span.status.status_code.name
    row[STATUS_MESSAGE] = span.status.description
    for index, attr in ATTRIBUTE_INDEX:
        value = attrs.pop(attr, None)
        if value is not None:
            row[index] = int(str(value)) if attr == _PARTITION else value
    row[ATTRIBUTES] = orjson.dumps(attrs, default=str).decode() if attrs else None
    links = tuple(
        (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") for link in span.links
    )
    row[LINKS] = links or None
    return tuple(row)


def row_to_readable(row: SpanRow, res: Resource) -> ReadableSpan:
    """The SDK span of a row (for SDK exporters such as OTLP). A model call's span is no
    messaging operation: its ``operation`` column (``chat``) is ``gen_ai.operation.name``,
    which its attributes carry; attributes whose value is null are left out (OpenTelemetry
    has no null attribute, e.g. the cost of an unpriced call)."""
    attrs: dict[str, Any] = {}
    chat = row[OPERATION] == CHAT
    for index, attr in ATTRIBUTE_INDEX:
        value = row[index]
        if value is not None and not (chat and index == OPERATION):
            attrs[attr] = str(value) if attr == _PARTITION else value
    if row[ATTRIBUTES]:
        extra: dict[str, Any] = orjson.loads(row[ATTRIBUTES])
        attrs.update((k, v) for k, v in extra.items() if v is not None)
    trace_id = int(row[TRACE_ID], 16)
    parent = (
        SpanContext(trace_id, int(row[PARENT_SPAN_ID], 16), True, _SAMPLED)
        if row[PARENT_SPAN_ID]
        else None
    )
    links: Sequence[Link] = tuple(
        Link(SpanContext(int(t, 16), int(s, 16), True, _SAMPLED)) for t, s in row[LINKS] or ()
    )
    status = StatusCode[row[STATUS]]
    return ReadableSpan(
        name=row[NAME],
        context=SpanContext(trace_id, int(row[SPAN_ID], 16), False, _SAMPLED),
        parent=parent,
        resource=res,
        attributes=attrs,
        links=links,
        kind=SpanKind[row[KIND]],
        status=Status(status, row[STATUS_MESSAGE] if status is StatusCode.ERROR else None),
        start_time=row[START_NS],
        end_time=row[END_NS],
    )
