"""Spans to DuckDB: a sized queue drained by one thread, one Arrow batch per INSERT.

:class:`SpanBatcher` takes span rows from any thread into a bounded queue (a full queue drops
the span and counts it) and a background thread writes them in batches. :class:`DuckDBSpanExporter`
writes one batch as one Arrow table with one ``INSERT … SELECT`` (plus one for its links) in one
transaction, which also updates the segment's counts: spans ended, written, dropped and failed.
Row-wise inserts would manage a few hundred rows a second (DESIGN.md §6); this path sustains
tens of thousands (``python -m bench.tracing``).

The segment file stays open for writing while the process traces; DuckDB lets no other process
open it meanwhile, so analyses read merged copies (:mod:`observability.segments`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from blackboard.errors import MissingDependencyError, TraceError
from blackboard.logs import get_logger
from observability.runs import RunInfo
from observability.schema import DDL, LINKS, SPAN_COLUMNS, SPAN_FIELDS, SPAN_ID, TRACE_ID, SpanRow
from observability.settings import TraceSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

try:
    import duckdb
    import pyarrow as pa
except ImportError as exc:  # pragma: no cover - both are dependencies of the package
    raise MissingDependencyError(
        f"writing traces needs the {exc.name!r} package: pip install kafka-blackboard"
    ) from exc

log = get_logger("traces")

_ARROW_TYPES = {
    "VARCHAR": pa.string(),
    "JSON": pa.string(),
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
}
SPAN_SCHEMA = pa.schema([(name, _ARROW_TYPES[kind]) for name, kind in SPAN_FIELDS])
LINK_SCHEMA = pa.schema(
    [(n, pa.string()) for n in ("trace_id", "span_id", "linked_trace_id", "linked_span_id")]
)
_COLUMNS = ", ".join(SPAN_COLUMNS)
_INSERT_SPANS = (
    f"INSERT INTO spans (run_id, worker, {_COLUMNS}, duration_ms) "
    f"SELECT $1, $2, {_COLUMNS}, (end_ns - start_ns) / 1e6 FROM span_batch"
)
_INSERT_LINKS = (
    "INSERT INTO links SELECT $1, trace_id, span_id, linked_trace_id, linked_span_id "
    "FROM link_batch"
)


@dataclass(frozen=True, slots=True)
class SpanCounts:
    """What happened to the spans of one segment.

    Attributes:
        ended: spans that ended (each one reached the queue or was dropped at it).
        written: spans in the segment file.
        dropped: spans that found the queue full.
        failed: spans of batches whose write failed.
    """

    ended: int
    written: int
    dropped: int
    failed: int

    @property
    def lost(self) -> int:
        """Spans that ended but are not in the file (including those still queued)."""
        return self.ended - self.written


def rows_to_arrow(rows: Sequence[SpanRow]) -> tuple[pa.Table, pa.Table]:
    """A batch of span rows as one Arrow table of spans and one of their links."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * (LINKS + 1)
    spans = pa.Table.from_arrays(
        [pa.array(columns[i], type=SPAN_SCHEMA.field(i).type) for i in range(LINKS)],
        schema=SPAN_SCHEMA,
    )
    link_rows = [
        (r[TRACE_ID], r[SPAN_ID], linked[0], linked[1])
        for r in rows
        if r[LINKS]
        for linked in r[LINKS]
    ]
    link_columns = list(zip(*link_rows, strict=True)) if link_rows else [()] * 4
    links = pa.Table.from_arrays(
        [pa.array(c, type=pa.string()) for c in link_columns], schema=LINK_SCHEMA
    )
    return spans, links


class DuckDBSpanExporter(SpanExporter):
    """Writes span batches to one segment file: a DuckDB database with the tables of
    :mod:`observability.schema`, one ``runs`` row and one ``segments`` row.

    Use from one thread at a time (the batcher's). :meth:`export` takes SDK spans, as any
    ``SpanExporter``; :meth:`write` takes our rows.

    Args:
        path: the segment file (created with its directory; must not exist).
        run: the run it belongs to.
        segment: this process's segment name (the ``worker`` of its spans).

    Raises:
        TraceError: the file exists or cannot be created.
    """

    def __init__(self, path: Path, run: RunInfo, segment: str) -> None:
        self.path = path
        self.run = run
        self.segment = segment
        self.written = 0
        if path.exists():
            raise TraceError(f"trace segment {path} exists already")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._con = duckdb.connect(str(path))
        except (OSError, duckdb.Error) as exc:
            raise TraceError(f"cannot create trace segment {path}: {exc}") from exc
        con = self._con
        for statement in DDL:
            con.execute(statement)
        started = run.started_at.astimezone(UTC).replace(tzinfo=None)
        con.execute(
            "INSERT INTO runs VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, 0, 0, 0, 0, 1, 0)",
            [
                run.run_id,
                run.scenario,
                run.policy,
                run.seed,
                run.store,
                run.git_sha,
                orjson.dumps(dict(run.config), default=str).decode(),
                orjson.dumps(dict(run.versions)).decode(),
                started,
            ],
        )
        con.execute(
            "INSERT INTO segments VALUES ($1, $2, $3, $4, $5, NULL, 0, 0, 0, 0, false)",
            [run.run_id, segment, socket.gethostname(), os.getpid(), started],
        )

    def write(self, rows: Sequence[SpanRow], counts: SpanCounts | None = None) -> int:
        """Insert ``rows`` (one Arrow batch, one INSERT for spans and one for links) and the
        latest ``counts``, in one transaction; return how many rows were written.

        Raises:
            duckdb.Error: the write failed; nothing of it is in the file.
        """
        spans, links = rows_to_arrow(rows)
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            if rows:
                con.register("span_batch", spans)
                con.register("link_batch", links)
                try:
                    con.execute(_INSERT_SPANS, [self.run.run_id, self.segment])
                    if links.num_rows:
                        con.execute(_INSERT_LINKS, [self.run.run_id])
                finally:
                    con.unregister("span_batch")
                    con.unregister("link_batch")
            self._record_counts(counts, len(rows), closing=False)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self.written += len(rows)
        return len(rows)

    def _record_counts(self, counts: SpanCounts | None, adding: int, *, closing: bool) -> None:
        ended = counts.ended if counts is not None else self.written + adding
        dropped = counts.dropped if counts is not None else 0
        failed = counts.failed if counts is not None else 0
        written = self.written + adding
        finished = datetime.now(UTC).replace(tzinfo=None) if closing else None
        params = [ended, written, dropped, failed, finished, self.run.run_id]
        self._con.execute(
            "UPDATE segments SET spans_ended = $1, spans_written = $2, spans_dropped = $3, "
            "spans_failed = $4, finished_at = $5, closed = $5 IS NOT NULL "
            "WHERE run_id = $6 AND segment = $7",
            [*params, self.segment],
        )
        self._con.execute(
            "UPDATE runs SET spans_ended = $1, spans_written = $2, spans_dropped = $3, "
            "spans_failed = $4, finished_at = $5 WHERE run_id = $6",
            params,
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write SDK spans (the ``SpanExporter`` interface)."""
        from observability.otel import readable_to_row

        try:
            self.write([readable_to_row(s) for s in spans])
        except duckdb.Error as exc:
            log.warning("span export failed", spans=len(spans), error=str(exc))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def close_segment(self, counts: SpanCounts) -> None:
        """Record the final counts, mark the segment closed and close the file."""
        try:
            self._con.execute("BEGIN TRANSACTION")
            self._record_counts(counts, 0, closing=True)
            self._con.execute("COMMIT")
            self._con.execute("CHECKPOINT")
        finally:
            self._con.close()

    def shutdown(self) -> None:
        """Close the file without final counts (the ``SpanExporter`` interface)."""
        self._con.close()


class SpanBatcher:
    """A sized queue of span rows and the thread that writes them in batches.

    :meth:`add` is thread-safe and never blocks on the write: a full queue drops the span and
    counts it. Every ended span is counted, so ``ended - written`` is what was lost.

    Args:
        exporter: the segment writer.
        settings: queue size, batch size, flush interval.
        forward: an SDK exporter (OTLP) that gets each batch too, after DuckDB.
        resource: the resource of forwarded spans.
    """

    def __init__(
        self,
        exporter: DuckDBSpanExporter,
        settings: TraceSettings,
        *,
        forward: SpanExporter | None = None,
        resource: Resource | None = None,
    ) -> None:
        self._exporter = exporter
        self._settings = settings
        self._forward = forward
        self._resource = resource or Resource.create({})
        self._queue: deque[SpanRow] = deque()
        self._lock = threading.Lock()
        self._ended = 0
        self._dropped = 0
        self._failed = 0
        self._max = settings.max_queue
        self._batch = settings.batch_size
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._writing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="span-exporter", daemon=True)
        self._thread.start()

    def add(self, row: SpanRow) -> None:
        """Queue one ended span (or drop it, counted, when the queue is full)."""
        with self._lock:
            self._ended += 1
            queue = self._queue
            if len(queue) >= self._max or self._closed:
                self._dropped += 1
                return
            queue.append(row)
            if len(queue) == self._batch:
                self._wake.set()

    def counts(self) -> SpanCounts:
        """The counts so far."""
        with self._lock:
            return SpanCounts(self._ended, self._exporter.written, self._dropped, self._failed)

    def _run(self) -> None:
        interval = self._settings.flush_interval_s
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            closing = self._closed
            self._drain()
            if closing:
                return

    def _drain(self) -> None:
        queue, size = self._queue, self._batch
        with self._idle:
            self._writing = True
        try:
            while queue:
                batch = [queue.popleft() for _ in range(min(size, len(queue)))]
                self._write(batch)
        finally:
            with self._idle:
                self._writing = False
                self._idle.notify_all()

    def _write(self, batch: list[SpanRow]) -> None:
        try:
            self._exporter.write(batch, self._counts_with(len(batch)))
        except Exception as exc:
            with self._lock:
                self._failed += len(batch)
            log.warning(
                "writing spans failed", spans=len(batch), error=f"{type(exc).__name__}: {exc}"
            )
            return
        forward = self._forward
        if forward is not None:
            from observability.otel import row_to_readable

            try:
                forward.export([row_to_readable(r, self._resource) for r in batch])
            except Exception as exc:  # an unreachable collector must not stop the DuckDB path
                log.warning("OTLP export failed", spans=len(batch), error=str(exc))

    def _counts_with(self, adding: int) -> SpanCounts:
        with self._lock:
            return SpanCounts(
                self._ended, self._exporter.written + adding, self._dropped, self._failed
            )

    def flush(self, timeout_s: float = 30.0) -> SpanCounts:
        """Write everything queued now; wait up to ``timeout_s``; return the counts."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._idle:
                if not self._queue and not self._writing:
                    break
            self._wake.set()
            with self._idle:
                self._idle.wait(0.01)
        return self.counts()

    def close(self, timeout_s: float = 60.0) -> SpanCounts:
        """Stop taking spans, write what is queued, record the final counts, close the file.
        Spans ended after this are counted as dropped (they cannot reach the file)."""
        with self._lock:
            if self._closed:
                return SpanCounts(self._ended, self._exporter.written, self._dropped, self._failed)
            self._closed = True
        self._wake.set()
        self._thread.join(timeout_s)
        counts = self.counts()
        self._exporter.close_segment(counts)
        if self._forward is not None:
            self._forward.shutdown()
        if counts.lost:
            log.warning(
                "spans were lost",
                ended=counts.ended,
                written=counts.written,
                dropped=counts.dropped,
                failed=counts.failed,
                segment=str(self._exporter.path),
            )
        return counts
