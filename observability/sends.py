"""The send spans of one :meth:`Blackboard.publish_many` call: a ``traceparent`` per artifact,
and a PRODUCER span per artifact covering the call (a backpressure wait included), with each
target topic's backpressure state. :class:`Sends` is the null object of the fast path."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Final

import orjson

from blackboard.records import partition_for
from observability.schema import format_traceparent
from observability.spans import error_class_name, error_text

if TYPE_CHECKING:
    from blackboard.artifacts import Envelope
    from blackboard.blackboard import Blackboard
    from observability.spans import Tracer


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
        backpressure state (``bb.throttle.*``) when ``attributes`` (per topic) are given."""
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


class ActiveSends(Sends):
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
        message = None if exc is None else error_text(exc)
        error_type = None if exc is None else error_class_name(exc)
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
