"""Spans of the processing loop (docs/DESIGN.md §6): what the runner and the blackboard record.

Tracing is on in a process between :func:`start_tracing` and :meth:`Tracing.stop`. While it is
off every function returns at once (a null span, the envelope unchanged), so the runtime pays
one global lookup per call. The runner reaches these through its tracing hook
(:class:`agents.builtin_hooks.TracingHook`); what they know of an agent is an
:class:`AgentInfo`, and they only observe: the runner commits, :func:`settled` records it.

The spans, with the OpenTelemetry messaging attributes and ours (``bb.*``):

- **send** (PRODUCER) per artifact published: by :meth:`Blackboard.publish_many` (a child of
  the caller's current span, if any, else a new trace per correlation id) and per agent output
  (a child of the process span that made it). Its context goes into the artifact's envelope as
  the W3C ``traceparent``, so it travels in the record's headers.
- **process** (CONSUMER) per handler attempt: a child of the send span that produced the input
  *and* linked to it (the conventions' link; the parent keeps a correlation id in one trace),
  with partition, offset, attempt, queue wait (poll to handler start), policy decision, tenant,
  agent, and the outcome (``ok``, ``retried``, ``dead_letter``) and error of a failed attempt.
  While it runs it is the current span: log lines carry its ids, and spans a handler makes with
  the OpenTelemetry API become its children.
- **settle** (CLIENT) per atomic commit, with the counts it carried.
- **chat** (CLIENT) per model call a handler makes (``ctx.llm``): a child of its process span,
  with the OpenTelemetry GenAI attributes (``gen_ai.provider.name``, ``gen_ai.request.model``,
  ``gen_ai.usage.input_tokens``, ...) and ``bb.llm.cost``, ``bb.llm.reasks``, ``bb.llm.error``.
- a zero-length **process** span with the error for a record dead-lettered before any handler
  ran (stages ``deserialize``, ``validate``, ``admission``).

Spans are built as plain rows (:mod:`observability.schema`), not as SDK spans: an SDK span
validates each attribute under a lock (~23 µs with our 14 attributes against ~2 µs here).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blackboard.artifacts import Envelope
from blackboard.errors import TraceError
from blackboard.publishing import Publish, PublishHook
from blackboard.spancontext import current_span
from observability.schema import SpanRow, format_traceparent
from observability.sends import NO_SENDS, ActiveSends, Sends
from observability.spans import (
    ADMITTED,
    NO_SPAN,
    PRE_PROCESS_STAGES,
    AgentInfo,
    ProcessSpan,
    Span,
    Tracer,
)

if TYPE_CHECKING:
    from blackboard.blackboard import Blackboard
    from blackboard.records import AtomicCommit, Record
    from observability.exporter import SpanBatcher, SpanCounts
    from observability.runs import RunInfo
    from observability.settings import TraceSettings

_active: Tracer | None = None


# -- the hooks --------------------------------------------------------------------------------


def enabled() -> bool:
    """Whether tracing is on in this process."""
    return _active is not None


def process(
    agent: AgentInfo,
    record: Record,
    envelope: Envelope,
    attempt: int,
    polled_at: float | None,
    decision: object = ADMITTED,
    queue_wait_ms: float | None = None,
) -> Span:
    """Start the process span of one handler attempt (:data:`NO_SPAN` when tracing is off).
    ``polled_at`` is the ``time.monotonic()`` at which the poll returned the record;
    ``decision`` is the scheduling policy's account of when it ran (``bb.policy.decision``:
    its ``str()``, made only when tracing is on); ``queue_wait_ms``, if given, is the queue
    wait instead of the time since ``polled_at`` (a timer's: its oldest record's)."""
    tracer = _active
    if tracer is None:
        return NO_SPAN
    span = ProcessSpan(tracer, agent, record, envelope, attempt, polled_at, decision)
    if queue_wait_ms is not None:
        span.redecide(decision, queue_wait_ms)
    return span


def redecide(decision: object, queue_wait_ms: float) -> None:
    """A batch filled up inside the current process span (the record that completed it):
    the span records the batch's release (``bb.policy.decision``) and the queue wait of its
    oldest record instead of the record's own. Nothing when tracing is off or no span is
    current."""
    if _active is None:
        return
    span = current_span.get()
    if isinstance(span, ProcessSpan):
        span.redecide(decision, queue_wait_ms)


def child_traceparent() -> str | None:
    """The ``traceparent`` for an output made now: a new span id under the current process
    span's trace (None when tracing is off). :func:`outgoing` records the span."""
    tracer = _active
    if tracer is None:
        return None
    parent = current_span.get()
    trace_id = parent.trace_id if parent is not None else tracer.trace_id()
    return format_traceparent(trace_id, tracer.span_id())


def outgoing(agent: AgentInfo, envelope: Envelope) -> Envelope:
    """Record the send span of an agent's output; the envelope to send (with its
    ``traceparent``)."""
    tracer = _active
    if tracer is None:
        return envelope
    return tracer.output(agent, envelope)


def sends(correlation_id: str | None = None) -> Sends:
    """The send spans of one publish call (:data:`NO_SENDS` when tracing is off)."""
    tracer = _active
    if tracer is None:
        return NO_SENDS
    return ActiveSends(tracer, correlation_id is not None)


class SendSpans(PublishHook):
    """The publish hook of a blackboard's send spans: one per artifact published, from the
    start of the publish (a backpressure wait included) to the store's answer, with each
    target topic's backpressure state; nothing while tracing is off."""

    order = 90  # last to start timing the store call, first to hear its answer

    def begin(self, publish: Publish) -> None:
        found = sends(publish.correlation_id)
        if found is not NO_SENDS:
            publish.scratch[self] = found
            publish.namers.append(self)

    def traceparent(self, publish: Publish) -> str | None:
        found: Sends | None = publish.scratch.get(self)
        return found.traceparent() if found is not None else None

    def after_send(self, publish: Publish, error: BaseException | None) -> None:
        found: Sends | None = publish.scratch.get(self)
        if found is not None:
            found.publishing(publish.board, publish.envelopes, publish.attributes)
            found.__exit__(type(error) if error is not None else None, error, None)


def publish_hook(board: Blackboard) -> PublishHook:
    """The send-span hook of ``board`` (entry point ``kafka_blackboard.publish_hooks``)."""
    return SendSpans()


def settled(
    agent: AgentInfo,
    commit: AtomicCommit,
    records: int,
    start_ns: int,
    error: BaseException | None = None,
) -> None:
    """Record a commit the runner made, from ``start_ns`` (``time.time_ns()``) until now."""
    tracer = _active
    if tracer is not None:
        tracer.settled(agent, commit, records, start_ns, error)


def model_call(
    agent: str,
    envelope: Envelope,
    name: str,
    start_ns: int,
    attributes: dict[str, Any],
    error: BaseException | None,
) -> None:
    """Record one model call's span (nothing when tracing is off)."""
    tracer = _active
    if tracer is not None:
        tracer.model_call(agent, envelope, name, start_ns, attributes, error)


def rejected(agent: AgentInfo, record: Record, stage: str, error: BaseException) -> None:
    """Note a record dead-lettered before any handler ran (later stages are on the attempt's
    process span already)."""
    tracer = _active
    if tracer is not None and stage in PRE_PROCESS_STAGES:
        tracer.rejected(agent, record, stage, error)


# -- turning tracing on and off ---------------------------------------------------------------


@dataclass(slots=True)
class Tracing:
    """Tracing of this process into one segment of a run; :meth:`stop` flushes and closes it.

    Attributes:
        run: what the run is (id, scenario, policy, seed, ...).
        path: the segment's file of Arrow batches.
        traces_dir: the directory holding every run.
    """

    run: RunInfo
    path: Path
    traces_dir: Path
    _batcher: SpanBatcher
    _tracer: Tracer

    def counts(self) -> SpanCounts:
        """Spans ended, written, dropped and failed so far."""
        return self._batcher.counts()

    def flush(self, timeout_s: float = 30.0) -> SpanCounts:
        """Write every span ended so far; return the counts."""
        return self._batcher.flush(timeout_s)

    def stop(self) -> SpanCounts:
        """Turn tracing off, write what is queued, close the segment; return the final counts
        (written < ended means spans were lost, and the run's summary says so)."""
        global _active
        if _active is self._tracer:
            _active = None
        return self._batcher.close()

    def __enter__(self) -> Tracing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_tracing(
    traces_dir: str | os.PathLike[str],
    run: RunInfo,
    *,
    segment: str | None = None,
    settings: TraceSettings | None = None,
) -> Tracing:
    """Turn tracing on for this process: spans go to a new segment file of ``run`` under
    ``traces_dir`` (``<traces_dir>/<run_id>/segments/<segment>.arrows``), and to an OTLP
    endpoint too when ``OTEL_EXPORTER_OTLP_*`` variables are set.

    Args:
        traces_dir: where runs are kept.
        run: the run this process takes part in; processes of one run share its id.
        segment: this process's segment name (default: host, pid and a random suffix).
        settings: queue and batch sizes (default: from the environment).

    Raises:
        TraceError: tracing is on already, or the segment cannot be created.
        MissingDependencyError: DuckDB, Arrow or (for OTLP) the OTLP exporter is missing.
    """
    global _active
    if _active is not None:
        raise TraceError("tracing is on already in this process; stop it first")
    from observability import otel, segments
    from observability.exporter import SegmentWriter, SpanBatcher
    from observability.settings import TraceSettings

    settings = settings or TraceSettings.from_env()
    root = Path(traces_dir)
    name = segment or segments.segment_name()
    writer = SegmentWriter(segments.segments_dir(root, run.run_id), run, name)
    forward = otel.otlp_exporter_from_env()
    batcher = SpanBatcher(writer, settings, forward=forward, resource=otel.resource(run, name))
    otel.install_provider(_sdk_sink)
    tracer = Tracer(
        batcher.add, attach=otel.attach_span, detach=otel.detach, parent=otel.current_ids
    )
    _active = tracer
    return Tracing(run, writer.path, root, batcher, tracer)


def _sdk_sink() -> Callable[[SpanRow], None] | None:
    """Where spans made through the OpenTelemetry API go: the active tracer's sink, if any."""
    tracer = _active
    return tracer.emit if tracer is not None else None
