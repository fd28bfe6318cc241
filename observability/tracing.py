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
- a zero-length **process** span with the error for a record dead-lettered before any handler
  ran (stages ``deserialize``, ``validate``, ``admission``).

Spans are built as plain rows (:mod:`observability.schema`), not as SDK spans: an SDK span
validates each attribute under a lock (~23 µs with our 14 attributes against ~2 µs here).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import orjson

from blackboard.artifacts import Envelope
from blackboard.errors import TraceError
from blackboard.publishing import Publish, PublishHook
from blackboard.records import partition_for
from blackboard.spancontext import current_span
from observability.schema import SpanRow, format_traceparent, parse_traceparent

if TYPE_CHECKING:
    from contextvars import Token

    from blackboard.blackboard import Blackboard
    from blackboard.records import AtomicCommit, Record
    from observability.exporter import SpanBatcher, SpanCounts
    from observability.runs import RunInfo
    from observability.settings import TraceSettings

#: The policy decision every admitted record gets until the scheduler decides otherwise.
ADMITTED: Final = "admitted"
#: Dead-letter stages that happen before any handler runs (no process span exists for them).
PRE_PROCESS_STAGES: Final = frozenset({"deserialize", "validate", "admission"})

_active: Tracer | None = None


_ENVELOPE_FIELDS = (
    "id", "type", "schema_version", "correlation_id", "causation_ids", "partition_key", "tenant",
    "produced_by", "created_at", "traceparent",
)  # fmt: skip


def _copy_with_traceparent(env: Envelope, traceparent: str) -> Envelope:
    # Positional construction: ~5x faster than dataclasses.replace, which inspects the fields
    # on every call. Used only while Envelope's fields are exactly these (checked below).
    return Envelope(
        env.id, env.type, env.schema_version, env.correlation_id, env.causation_ids,
        env.partition_key, env.tenant, env.produced_by, env.created_at, traceparent,
    )  # fmt: skip


def _replace_traceparent(env: Envelope, traceparent: str) -> Envelope:
    return replace(env, traceparent=traceparent)


#: ``env`` with another ``traceparent`` (a new envelope: envelopes are frozen).
with_traceparent: Final[Callable[[Envelope, str], Envelope]] = (
    _copy_with_traceparent
    if tuple(f.name for f in fields(Envelope)) == _ENVELOPE_FIELDS
    else _replace_traceparent
)


def _error_type(error: BaseException) -> str:
    cls = type(error)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _error_message(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:1000]


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """What every span of one agent's runner says the same.

    Attributes:
        system: ``messaging.system`` (kafka, redis, memory).
        group: the agent's consumer group.
        agent: the agent's name.
        partitions: the blackboard's partition count (an output's partition).
        topic: the topic of an artifact type name.
        send_attributes: a topic's backpressure state for an output's send span (None while
            backpressure is off).
    """

    system: str
    group: str
    agent: str
    partitions: int
    topic: Callable[[str], str]
    send_attributes: Callable[[str], Mapping[str, object]] | None = None

    @classmethod
    def of(
        cls,
        board: Blackboard,
        group: str,
        agent: str,
        send_attributes: Callable[[str], Mapping[str, object]] | None = None,
    ) -> AgentInfo:
        """The info of ``agent`` (consumer group ``group``) on ``board``."""
        return cls(
            board.store.system,
            group,
            agent,
            board.settings.partitions,
            board.topics.for_type,
            send_attributes,
        )


class Tracer:
    """Makes span rows and hands them to a sink (the exporter's queue). One per process while
    tracing is on; the hooks below find it.

    Args:
        sink: takes each finished span row; must be thread-safe (publishes may come from any
            thread).
        attach: if given, makes a span current for the OpenTelemetry API (returns a token for
            ``detach``), so spans a handler makes are children of its process span.
        detach: undoes ``attach``.
        parent: the OpenTelemetry API's current ``(trace_id, span_id)``, if any.
    """

    def __init__(
        self,
        sink: Callable[[SpanRow], None],
        *,
        attach: Callable[[str, str], object] | None = None,
        detach: Callable[[object], None] | None = None,
        parent: Callable[[], tuple[str, str] | None] | None = None,
    ) -> None:
        self.emit = sink
        self.attach = attach
        self.detach = detach
        self._otel_parent = parent
        self.bits = random.Random(os.urandom(16)).getrandbits

    def trace_id(self) -> str:
        """A new random trace id (32 hex digits)."""
        return "%032x" % (self.bits(128) or 1)

    def span_id(self) -> str:
        """A new random span id (16 hex digits)."""
        return "%016x" % (self.bits(64) or 1)

    def parent(self) -> tuple[str, str] | None:
        """``(trace_id, span_id)`` of the current span: ours, else the OpenTelemetry API's."""
        span = current_span.get()
        if span is not None:
            return span.trace_id, span.span_id
        return self._otel_parent() if self._otel_parent is not None else None

    # -- spans made in one go ---------------------------------------------------------------
    def output(self, about: AgentInfo, env: Envelope) -> Envelope:
        """The send span of an agent's output (a child of the current process span), under
        the ids :func:`child_traceparent` gave its envelope; an envelope made without them
        gets new ones (returned in a copy)."""
        parent = current_span.get()
        parent_id = parent.span_id if parent is not None else None
        ids = parse_traceparent(env.traceparent)
        if ids is not None:
            trace_id, span_id = ids
        else:
            trace_id = parent.trace_id if parent is not None else self.trace_id()
            span_id = self.span_id()
            env = with_traceparent(env, format_traceparent(trace_id, span_id))
        topic = about.topic(env.type)
        attributes = about.send_attributes  # the agent's backpressure, if on
        extra = orjson.dumps(attributes(topic)).decode() if attributes is not None else None
        now = time.time_ns()
        self.emit(
            (
                trace_id, span_id, parent_id, f"send {topic}", "PRODUCER", now, now, "OK",
                None, "send", about.system, topic,
                partition_for(env.partition_key.encode(), about.partitions), None,
                about.group, env.correlation_id, env.id, env.type, None, None, None,
                env.tenant, about.agent, "ok", None, None, extra, None,
            )
        )  # fmt: skip
        return env

    def rejected(self, about: AgentInfo, record: Record, stage: str, error: BaseException) -> None:
        """A zero-length process span, with the error, for a record dead-lettered before a
        handler ran."""
        found = parse_traceparent((record.header("traceparent") or b"").decode(errors="replace"))
        if found is not None:
            trace_id, parent_id = found
            links: tuple[tuple[str, str], ...] | None = (found,)
        else:
            trace_id, parent_id, links = self.trace_id(), None, None
        art_id, art_type = record.header("bb.id"), record.header("bb.type")
        corr = record.header("bb.correlation_id")
        now = time.time_ns()
        self.emit(
            (
                trace_id, self.span_id(), parent_id, f"process {record.topic}", "CONSUMER", now,
                now, "ERROR", _error_message(error), "process", about.system,
                record.topic, record.partition, record.offset, about.group,
                corr.decode(errors="replace") if corr else None,
                art_id.decode(errors="replace") if art_id else None,
                art_type.decode(errors="replace") if art_type else None, 1, ADMITTED, None,
                None, about.agent, "dead_letter", stage, _error_type(error), None, links,
            )
        )  # fmt: skip

    def settled(
        self,
        about: AgentInfo,
        commit: AtomicCommit,
        records: int,
        start_ns: int,
        error: BaseException | None,
    ) -> None:
        """The settle span of a commit the runner made (from ``start_ns`` until now)."""
        extra = orjson.dumps(
            {
                "bb.commit.records": records,
                "bb.commit.outputs": len(commit.outputs),
                "bb.commit.dead_letters": len(commit.dead_letters),
                "bb.commit.partitions": len(commit.offsets),
                "bb.commit.state_writes": len(commit.state),
            }
        ).decode()
        self.emit(
            (
                self.trace_id(), self.span_id(), None, f"settle {about.group}", "CLIENT",
                start_ns, time.time_ns(), "OK" if error is None else "ERROR",
                None if error is None else _error_message(error), "settle",
                about.system, None, None, None, about.group, None, None,
                None, None, None, None, None, about.agent,
                "ok" if error is None else "failed", None,
                None if error is None else _error_type(error), extra, None,
            )
        )  # fmt: skip


class Span:
    """A span in progress, as the runner holds it. This base is the null span of the fast path
    when tracing is off: ending it does nothing."""

    __slots__ = ()

    def end(
        self, error: BaseException | None = None, *, stage: str | None = None, retry: bool = False
    ) -> None:
        """End the span: successful without ``error``; else failed at ``stage``, to be tried
        again (``retry``) or dead-lettered. Ending twice does nothing."""


NO_SPAN: Final = Span()


class ProcessSpan(Span):
    """A process span: one handler attempt on one record. Current from creation to
    :meth:`end`, which must happen in the same task."""

    __slots__ = (
        "_about",
        "_attempt",
        "_decision",
        "_envelope",
        "_links",
        "_otel_token",
        "_parent_id",
        "_queue_wait_ms",
        "_record",
        "_start_ns",
        "_token",
        "_tracer",
        "agent",
        "artifact_id",
        "span_id",
        "trace_id",
    )

    def __init__(
        self,
        tracer: Tracer,
        about: AgentInfo,
        record: Record,
        envelope: Envelope,
        attempt: int,
        polled_at: float | None,
        decision: object = ADMITTED,
    ) -> None:
        self._tracer = tracer
        self._decision = str(decision)
        self._parent_id: str | None
        self._links: tuple[tuple[str, str], ...] | None
        tp = envelope.traceparent  # parse_traceparent, inlined: this runs for every record
        if tp is not None and len(tp) == 55 and tp[2] == "-" and tp[35] == "-":
            # A child of the send span that produced the input, and linked to it.
            trace_id = self.trace_id = tp[3:35]
            parent_id = self._parent_id = tp[36:52]
            self._links = ((trace_id, parent_id),)
        else:  # no trace context (a plain producer, or tracing was off there): a new trace
            self.trace_id, self._parent_id, self._links = tracer.trace_id(), None, None
        self.span_id = "%016x" % (tracer.bits(64) or 1)
        self.artifact_id: str | None = envelope.id
        self.agent: str | None = about.agent
        self._about = about
        self._record = record
        self._envelope = envelope
        self._attempt = attempt
        self._queue_wait_ms = (
            (time.monotonic() - polled_at) * 1000.0 if polled_at is not None else None
        )
        self._token: Token[Any] | None = current_span.set(self)
        attach = tracer.attach
        self._otel_token = attach(self.trace_id, self.span_id) if attach is not None else None
        self._start_ns = time.time_ns()

    def redecide(self, decision: object, queue_wait_ms: float) -> None:
        """Say the attempt ran for ``decision`` after ``queue_wait_ms`` (a batch's release and
        its oldest record's wait) instead of what it was started with."""
        self._decision = str(decision)
        self._queue_wait_ms = queue_wait_ms

    def end(
        self, error: BaseException | None = None, *, stage: str | None = None, retry: bool = False
    ) -> None:
        """End the attempt (see :meth:`Span.end`) and stop being the current span."""
        token = self._token
        if token is None:
            return
        end_ns = time.time_ns()
        self._token = None
        current_span.reset(token)
        tracer = self._tracer
        if self._otel_token is not None and tracer.detach is not None:
            tracer.detach(self._otel_token)
        rec, env = self._record, self._envelope
        if error is None:
            status, message, outcome, error_type = "OK", None, "ok", None
        else:
            status, message = "ERROR", _error_message(error)
            outcome, error_type = ("retried" if retry else "dead_letter"), _error_type(error)
        about = self._about
        tracer.emit(
            (
                self.trace_id, self.span_id, self._parent_id, f"process {rec.topic}", "CONSUMER",
                self._start_ns, end_ns, status, message, "process", about.system, rec.topic,
                rec.partition, rec.offset, about.group, env.correlation_id, env.id, env.type,
                self._attempt, self._decision, self._queue_wait_ms, env.tenant, about.agent,
                outcome, stage if error is not None else None, error_type, None, self._links,
            )
        )  # fmt: skip


class Sends:
    """The send spans of one :meth:`Blackboard.publish_many` call. This base is the null
    object of the fast path: no traceparent, nothing recorded."""

    __slots__ = ()

    def traceparent(self) -> str | None:
        """The ``traceparent`` of the next artifact's send span (None when tracing is off)."""
        return None

    def publishing(
        self,
        board: Blackboard,
        envelopes: Sequence[Envelope],
        attributes: Mapping[str, Mapping[str, object]] | None = None,
    ) -> Sends:
        """Use as ``with sends.publishing(board, envelopes): store.publish(...)``: the spans
        cover the store call and carry its error, if any, and each target topic's
        backpressure state (``bb.throttle.*``) when ``throttles`` are given."""
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


NO_SENDS: Final = Sends()


class _ActiveSends(Sends):
    __slots__ = (
        "_attributes",
        "_board",
        "_envelopes",
        "_ids",
        "_parent_id",
        "_start_ns",
        "_trace_id",
        "_tracer",
    )

    def __init__(self, tracer: Tracer, shared_trace: bool) -> None:
        self._tracer = tracer
        parent = tracer.parent()
        self._trace_id: str | None
        self._parent_id: str | None
        if parent is not None:
            self._trace_id, self._parent_id = parent
        else:  # one correlation id given for every artifact: one trace for all of them
            self._trace_id, self._parent_id = (tracer.trace_id() if shared_trace else None), None
        self._ids: list[tuple[str, str]] = []
        self._board: Blackboard | None = None
        self._envelopes: Sequence[Envelope] = ()
        self._attributes: Mapping[str, Mapping[str, object]] | None = None
        self._start_ns = time.time_ns()

    def traceparent(self) -> str | None:
        tracer = self._tracer
        ids = (self._trace_id or tracer.trace_id(), tracer.span_id())
        self._ids.append(ids)
        return format_traceparent(*ids)

    def publishing(
        self,
        board: Blackboard,
        envelopes: Sequence[Envelope],
        attributes: Mapping[str, Mapping[str, object]] | None = None,
    ) -> Sends:
        self._board, self._envelopes, self._attributes = board, envelopes, attributes
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        board = self._board
        if board is None:
            return
        end_ns = time.time_ns()
        system = board.store.system
        partitions, for_type = board.settings.partitions, board.topics.for_type
        status = "OK" if exc is None else "ERROR"
        message = None if exc is None else _error_message(exc)
        error_type = None if exc is None else _error_type(exc)
        outcome = "ok" if exc is None else "failed"
        start, parent_id, emit = self._start_ns, self._parent_id, self._tracer.emit
        extras = {t: orjson.dumps(a).decode() for t, a in (self._attributes or {}).items()}
        for (trace_id, span_id), env in zip(self._ids, self._envelopes, strict=False):
            topic = for_type(env.type)
            emit(
                (
                    trace_id, span_id, parent_id, f"send {topic}", "PRODUCER", start, end_ns,
                    status, message, "send", system, topic,
                    partition_for(env.partition_key.encode(), partitions), None, None,
                    env.correlation_id, env.id, env.type, None, None, None, env.tenant,
                    env.produced_by, outcome, None, error_type, extras.get(topic), None,
                )
            )  # fmt: skip


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
    return _ActiveSends(tracer, correlation_id is not None)


class SendSpans(PublishHook):
    """The publish hook of a blackboard's send spans: one per artifact published, from the
    start of the publish (a backpressure wait included) to the store's answer, with each
    target topic's backpressure state; nothing while tracing is off."""

    order = 90  # last to start timing the store call, first to hear its answer

    def begin(self, publish: Publish) -> None:
        found = sends(publish.correlation_id)
        if found is not NO_SENDS:
            publish.scratch[self] = found

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
