"""Span objects of the processing loop (docs/DESIGN.md §6): the tracer that makes span rows, the
process span of one handler attempt, the send spans of one publish, and what they know of an
agent (:class:`AgentInfo`). :mod:`observability.tracing` turns tracing on and hands these out.

Spans are built as plain rows (:mod:`observability.schema`), not as SDK spans: an SDK span
validates each attribute under a lock (~23 µs with our 14 attributes against ~2 µs here).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Final

import orjson

from blackboard.artifacts import Envelope
from blackboard.records import partition_for
from blackboard.spancontext import current_span
from observability.schema import CHAT, SpanRow, format_traceparent, parse_traceparent

if TYPE_CHECKING:
    from contextvars import Token

    from blackboard.blackboard import Blackboard
    from blackboard.records import AtomicCommit, Record

#: The policy decision every admitted record gets until the scheduler decides otherwise.
ADMITTED: Final = "admitted"
#: Dead-letter stages that happen before any handler runs (no process span exists for them).
PRE_PROCESS_STAGES: Final = frozenset({"deserialize", "validate", "admission"})


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


def error_class_name(error: BaseException) -> str:
    cls = type(error)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def error_text(error: BaseException) -> str:
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
                now, "ERROR", error_text(error), "process", about.system,
                record.topic, record.partition, record.offset, about.group,
                corr.decode(errors="replace") if corr else None,
                art_id.decode(errors="replace") if art_id else None,
                art_type.decode(errors="replace") if art_type else None, 1, ADMITTED, None,
                None, about.agent, "dead_letter", stage, error_class_name(error), None, links,
            )
        )  # fmt: skip

    def model_call(
        self,
        agent: str,
        envelope: Envelope,
        name: str,
        start_ns: int,
        attributes: dict[str, Any],
        error: BaseException | None,
    ) -> None:
        """The span of one model call (``gen_ai.operation.name`` ``chat``): a child of the
        current process span (else of the span that sent ``envelope``, so the call stays in
        its correlation's trace), with the GenAI attributes in ``attributes``."""
        parent = current_span.get()
        parent_id: str | None
        if parent is not None:
            trace_id, parent_id = parent.trace_id, parent.span_id
        elif (sent := parse_traceparent(envelope.traceparent)) is not None:
            trace_id, parent_id = sent
        else:
            trace_id, parent_id = self.trace_id(), None
        failed = error is not None
        self.emit(
            (
                trace_id, self.span_id(), parent_id, name, "CLIENT", start_ns, time.time_ns(),
                "ERROR" if failed else "OK", error_text(error) if error else None, CHAT,
                None, None, None, None, None, envelope.correlation_id, envelope.id,
                envelope.type, None, None, None, envelope.tenant, agent,
                "failed" if failed else "ok", None, error_class_name(error) if error else None,
                orjson.dumps(attributes, default=str).decode(), None,
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
                None if error is None else error_text(error), "settle",
                about.system, None, None, None, about.group, None, None,
                None, None, None, None, None, about.agent,
                "ok" if error is None else "failed", None,
                None if error is None else error_class_name(error), extra, None,
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
            status, message = "ERROR", error_text(error)
            outcome, error_type = ("retried" if retry else "dead_letter"), error_class_name(error)
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
