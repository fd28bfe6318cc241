"""Spans out of the process: a sized queue drained by one thread into a segment of Arrow batches.

:class:`SpanBatcher` takes span rows from any thread into a bounded queue (a full queue drops
the span and counts it) and a background thread hands them in batches to
:class:`SegmentWriter`, which appends each batch to the process's segment as one Arrow record
batch (an Arrow IPC stream) and rewrites a small JSON sidecar with the run and
the counts: spans ended, written, dropped, failed. :func:`observability.segments.merge_run`
loads the batches into DuckDB, one ``INSERT … SELECT`` per batch.

Why not insert into DuckDB here, as each batch is made: DuckDB spends ~5 µs of CPU per span
row on an insert (27 columns), several times what making the span costs, and that CPU is taken
from the worker it observes; writing the Arrow batch costs under 1 µs a span and mostly
outside the GIL. A segment is also readable while its process runs (a DuckDB file open for
writing cannot be opened by any other process, docs/DESIGN.md §6), so a live run can be analysed.
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
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from blackboard.errors import MissingDependencyError, TraceError
from blackboard.logs import get_logger
from observability.runs import RunInfo
from observability.schema import SPAN_FIELDS, SpanRow
from observability.settings import TraceSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

try:
    import pyarrow as pa
    import pyarrow.ipc as ipc
except ImportError as exc:  # pragma: no cover - a dependency of the package
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
LINKS_TYPE = pa.list_(pa.struct([("trace_id", pa.string()), ("span_id", pa.string())]))
#: A batch of spans in a segment: the span columns, then the links.
BATCH_SCHEMA = pa.schema(
    [*((name, _ARROW_TYPES[kind]) for name, kind in SPAN_FIELDS), ("links", LINKS_TYPE)]
)
_ROW_TYPE = pa.struct(list(BATCH_SCHEMA))
SPANS_SUFFIX = ".arrows"
#: Longest time between two updates of a live segment's sidecar (its counts).
META_INTERVAL_S = 1.0
META_SUFFIX = ".json"


def rows_to_arrow(rows: Sequence[SpanRow]) -> pa.RecordBatch:
    """A batch of span rows as one Arrow record batch (the columns, then ``links``), converted
    in one pass in Arrow's C++ (half the time of building each column from Python)."""
    return pa.RecordBatch.from_struct_array(pa.array(rows, type=_ROW_TYPE))


@dataclass(frozen=True, slots=True)
class SpanCounts:
    """What happened to the spans of one segment.

    Attributes:
        ended: spans that ended (each one reached the queue or was dropped at it).
        written: spans written to the segment.
        dropped: spans that found the queue full.
        failed: spans of batches whose write failed.
    """

    ended: int
    written: int
    dropped: int
    failed: int

    @property
    def lost(self) -> int:
        """Spans that ended but are not in the segment (including those still queued)."""
        return self.ended - self.written


def _now() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat()


class SegmentWriter(SpanExporter):
    """One process's segment of a run: ``<name>.arrows``, an Arrow IPC stream with one record
    batch per write, and ``<name>.json``, the run, the segment and its counts (rewritten
    atomically at most every :data:`META_INTERVAL_S` and on close, so a process killed mid-run
    leaves counts at most that old).

    :meth:`write` takes our rows; :meth:`export` takes SDK spans, as any ``SpanExporter``.
    Use from one thread at a time (the batcher's).

    Args:
        directory: the run's segment directory (created if missing).
        run: the run.
        segment: this process's segment name (the ``worker`` of its spans).

    Raises:
        TraceError: the segment exists or cannot be created.
    """

    def __init__(self, directory: Path, run: RunInfo, segment: str) -> None:
        self.run = run
        self.segment = segment
        self.path = directory / f"{segment}{SPANS_SUFFIX}"
        self.meta_path = directory / f"{segment}{META_SUFFIX}"
        self.written = 0
        self._batches = 0
        self._meta_due = 0.0
        self._started = run.started_at.astimezone(UTC).replace(tzinfo=None).isoformat()
        if self.path.exists() or self.meta_path.exists():
            raise TraceError(f"trace segment {self.path} exists already")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._file = pa.OSFile(str(self.path), "wb")
            # Uncompressed: zstd takes ~4x the CPU of the write itself (0.55 against 0.13 µs a
            # span), from the worker being observed; merged files are compressed by DuckDB.
            self._stream = ipc.new_stream(self._file, BATCH_SCHEMA)
        except (OSError, pa.ArrowException) as exc:
            raise TraceError(f"cannot create trace segment {self.path}: {exc}") from exc
        self._write_meta(SpanCounts(0, 0, 0, 0), closed=False)

    def write(self, rows: Sequence[SpanRow], counts: SpanCounts | None = None) -> int:
        """Append ``rows`` as one Arrow record batch and record the latest ``counts`` (default:
        as many ended as written); return how many rows were written.

        Raises:
            pyarrow.ArrowException, OSError: the write failed.
        """
        if rows:
            self._stream.write_batch(rows_to_arrow(rows))
            self.written += len(rows)
            self._batches += 1
        now = time.monotonic()
        if now >= self._meta_due:  # a file replaced at most once a second (and on close)
            self._meta_due = now + META_INTERVAL_S
            self._write_meta(counts or SpanCounts(self.written, self.written, 0, 0), closed=False)
        return len(rows)

    def _write_meta(self, counts: SpanCounts, *, closed: bool) -> None:
        run = self.run
        doc: dict[str, Any] = {
            "run": {
                "run_id": run.run_id,
                "scenario": run.scenario,
                "policy": run.policy,
                "seed": run.seed,
                "store": run.store,
                "git_sha": run.git_sha,
                "config": dict(run.config),
                "versions": dict(run.versions),
            },
            "segment": self.segment,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self._started,
            "finished_at": _now() if closed else None,
            "closed": closed,
            "batches": self._batches,
            "spans_ended": counts.ended,
            "spans_written": self.written,
            "spans_dropped": counts.dropped,
            "spans_failed": counts.failed,
        }
        tmp = self.meta_path.with_name(f".{self.meta_path.name}.tmp")
        tmp.write_bytes(orjson.dumps(doc, default=str, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.meta_path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write SDK spans (the ``SpanExporter`` interface)."""
        from observability.otel import readable_to_row

        try:
            self.write([readable_to_row(s) for s in spans])
        except (OSError, pa.ArrowException) as exc:
            log.warning("span export failed", spans=len(spans), error=str(exc))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def close_segment(self, counts: SpanCounts) -> None:
        """End the stream, record the final counts and mark the segment closed."""
        try:
            self._stream.close()
        finally:
            self._file.close()
        self._write_meta(counts, closed=True)

    def shutdown(self) -> None:
        """Close the segment with the counts it knows (the ``SpanExporter`` interface)."""
        self.close_segment(SpanCounts(self.written, self.written, 0, 0))


class SpanBatcher:
    """A sized queue of span rows and the thread that writes them in batches.

    :meth:`add` is thread-safe, takes no lock and never waits for a write: a full queue drops
    the span and counts it. Every span ended is either queued or dropped, so
    ``ended = taken + queued + dropped`` is exact without counting on the hot path, and
    ``ended - written`` is what was lost.

    Args:
        writer: the segment.
        settings: queue size, batch size, flush interval.
        forward: an SDK exporter (OTLP) that gets each batch too.
        resource: the resource of forwarded spans.
    """

    def __init__(
        self,
        writer: SegmentWriter,
        settings: TraceSettings,
        *,
        forward: SpanExporter | None = None,
        resource: Resource | None = None,
    ) -> None:
        self._writer = writer
        self._settings = settings
        self._forward = forward
        self._resource = resource or Resource.create({})
        self._queue: deque[SpanRow] = deque()
        self._lock = threading.Lock()  # guards the counts below (never taken by add)
        self._max = settings.max_queue
        self._taken = 0  # rows the writer took off the queue
        self._dropped = 0
        self._failed = 0
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._writing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="span-exporter", daemon=True)
        self._thread.start()

    def add(self, row: SpanRow) -> None:
        """Queue one ended span (or drop it, counted, when the queue is full or closed)."""
        queue = self._queue
        if len(queue) < self._max:
            queue.append(row)  # atomic; a race may overfill the queue by a row or two
        else:
            with self._lock:
                self._dropped += 1

    def counts(self) -> SpanCounts:
        """The counts so far."""
        with self._lock:
            return self._counts()

    def _counts(self) -> SpanCounts:
        return SpanCounts(
            self._taken + len(self._queue) + self._dropped,
            self._writer.written,
            self._dropped,
            self._failed,
        )

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
        queue, size = self._queue, self._settings.batch_size
        with self._idle:
            self._writing = True
        try:
            while queue:
                batch = [queue.popleft() for _ in range(min(size, len(queue)))]
                with self._lock:
                    self._taken += len(batch)
                self._write(batch)
        finally:
            with self._idle:
                self._writing = False
                self._idle.notify_all()

    def _write(self, batch: list[SpanRow]) -> None:
        try:
            self._writer.write(batch, self.counts())
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
            except Exception as exc:  # an unreachable collector must not stop the segment
                log.warning("OTLP export failed", spans=len(batch), error=str(exc))

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
        """Stop taking spans, write what is queued, record the final counts, close the
        segment. Spans ended after this are counted as dropped (they cannot be written)."""
        with self._lock:
            if self._closed:
                return self._counts()
            self._closed = True
            self._max = 0  # from now on add() drops (and counts)
        self._wake.set()
        self._thread.join(timeout_s)
        counts = self.counts()
        self._writer.close_segment(counts)
        if self._forward is not None:
            self._forward.shutdown()
        if counts.lost:
            log.warning(
                "spans were lost",
                ended=counts.ended,
                written=counts.written,
                dropped=counts.dropped,
                failed=counts.failed,
                segment=str(self._writer.path),
            )
        return counts
