"""Where a run's traces live, and merging its segments into one DuckDB file for analysis.

::

    <traces>/<run_id>/segments/<segment>.arrows   one per process: Arrow batches (live)
    <traces>/<run_id>/segments/<segment>.json     its run, state and span counts
    <traces>/<run_id>/run.duckdb                  the merge: runs, segments, spans, links

:func:`merge_run` loads every batch of every segment with one ``INSERT … SELECT`` per Arrow
batch (never row by row) into a fresh file and swaps it in; it runs again whenever a segment
changed. A segment whose process is still running is merged as far as it is written (the run
is then partial, and its summary says so); one whose process died without closing it keeps
the counts it last recorded, and a batch cut short by the death is left out.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.ipc as ipc

from blackboard.errors import TraceError
from blackboard.logs import get_logger
from observability.exporter import META_SUFFIX, SPANS_SUFFIX
from observability.schema import DDL, SPAN_COLUMNS, TABLES

log = get_logger("traces")

SEGMENTS_DIR = "segments"
MERGED_FILE = "run.duckdb"

_COLUMNS = ", ".join(SPAN_COLUMNS)
_INSERT_SPANS = (
    f"INSERT INTO spans (run_id, worker, {_COLUMNS}, duration_ms) "
    f"SELECT $1, $2, {_COLUMNS}, (end_ns - start_ns) / 1e6 FROM span_batch"
)
_INSERT_LINKS = (
    "INSERT INTO links SELECT $1, trace_id, span_id, link.trace_id, link.span_id "
    "FROM (SELECT trace_id, span_id, unnest(links) AS link FROM span_batch "
    "WHERE links IS NOT NULL)"
)


def segment_name() -> str:
    """A name for this process's segment: host, pid and a random suffix."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40]
    return f"{host or 'host'}-{os.getpid()}-{os.urandom(2).hex()}"


def segments_dir(traces_dir: Path, run_id: str) -> Path:
    """The directory of a run's segments."""
    return traces_dir / run_id / SEGMENTS_DIR


def segment_metas(traces_dir: Path, run_id: str) -> list[Path]:
    """The sidecar (``.json``) of every segment of a run, by name."""
    return sorted(segments_dir(traces_dir, run_id).glob(f"*{META_SUFFIX}"))


def list_runs(traces_dir: Path) -> list[str]:
    """The runs under ``traces_dir``, oldest first (by their newest segment's time).

    Raises:
        TraceError: the directory does not exist.
    """
    if not traces_dir.is_dir():
        raise TraceError(f"no traces directory {traces_dir}")
    runs: list[tuple[float, str]] = []
    for entry in traces_dir.iterdir():
        metas = segment_metas(traces_dir, entry.name) if entry.is_dir() else []
        if metas:
            runs.append((max(_mtime(m) for m in metas), entry.name))
    return [name for _, name in sorted(runs)]


def latest_runs(traces_dir: Path, count: int = 1) -> list[str]:
    """The ``count`` newest runs, oldest first.

    Raises:
        TraceError: there are fewer runs than that.
    """
    runs = list_runs(traces_dir)
    if len(runs) < count:
        raise TraceError(
            f"{traces_dir} holds {len(runs)} run(s), {count} needed "
            "(write one with: blackboard demo --traces DIR)"
        )
    return runs[-count:]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _spans_of(meta_path: Path) -> Path:
    """The Arrow stream of the segment whose sidecar is ``meta_path``."""
    return meta_path.with_name(meta_path.name[: -len(META_SUFFIX)] + SPANS_SUFFIX)


def _alive(host: str, pid: int) -> bool:
    """Whether the process that wrote a segment still runs (on this host)."""
    if host != socket.gethostname():
        return False  # cannot tell; a segment from another machine is taken as it is
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_batches(path: Path) -> tuple[Iterator[pa.RecordBatch], list[bool]]:
    """The record batches of a segment's Arrow stream, and a flag list whose first item turns
    True if the stream ends in a cut-off batch (its process died while writing it)."""
    truncated = [False]

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            source = pa.memory_map(str(path))
        except (OSError, pa.ArrowException):
            truncated[0] = True
            return
        with source:
            try:
                reader = ipc.open_stream(source)
            except (OSError, pa.ArrowException):
                truncated[0] = _mtime(path) > 0 and path.stat().st_size > 0
                return
            while True:
                try:
                    yield reader.read_next_batch()
                except StopIteration:
                    return
                except (OSError, pa.ArrowException):
                    truncated[0] = True
                    return

    return batches(), truncated


@dataclass(frozen=True, slots=True)
class Merged:
    """A merged run file.

    Attributes:
        path: the file.
        segments: segments merged into it.
        open_segments: segments whose process was still writing them (merged as far as
            written).
    """

    path: Path
    segments: int
    open_segments: int


def _fresh(target: Path, metas: list[Path]) -> Merged | None:
    """The merged file if it is newer than every segment and none was open."""
    if not target.exists():
        return None
    newest = max(max(_mtime(m), _mtime(_spans_of(m))) for m in metas)
    if _mtime(target) < newest:
        return None
    with duckdb.connect(str(target), read_only=True) as con:
        rows = con.execute("SELECT segments, segments_open FROM runs").fetchall()
    if not rows or rows[0][1]:
        return None
    return Merged(target, int(rows[0][0]), 0)


def merge_run(traces_dir: Path, run_id: str, *, force: bool = False) -> Merged:
    """Merge a run's segments into ``<traces>/<run_id>/run.duckdb`` (rebuilt only when a
    segment changed or is still open, or ``force``) and return it.

    The merged ``runs`` row sums the segments' counts: spans ended, written, dropped and
    failed as the processes recorded them, and loaded as found in their batches.

    Raises:
        TraceError: the run has no segments, or a sidecar cannot be read.
    """
    metas = segment_metas(traces_dir, run_id)
    if not metas:
        raise TraceError(f"no run {run_id!r} in {traces_dir}")
    target = traces_dir / run_id / MERGED_FILE
    if not force:
        cached = _fresh(target, metas)
        if cached is not None:
            return cached
    tmp = target.with_name(f".{MERGED_FILE}.{os.getpid()}.{os.urandom(3).hex()}")
    segments: list[dict[str, Any]] = []
    try:
        with duckdb.connect(str(tmp)) as con:
            for statement in DDL:
                con.execute(statement)
            for meta_path in metas:
                segments.append(_load_segment(con, run_id, meta_path))
            _insert_segments(con, run_id, segments)
            con.execute("CHECKPOINT")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    open_count = sum(1 for s in segments if s["state"] == "open")
    return Merged(target, len(segments), open_count)


def _load_segment(con: duckdb.DuckDBPyConnection, run_id: str, meta_path: Path) -> dict[str, Any]:
    try:
        meta: dict[str, Any] = orjson.loads(meta_path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise TraceError(f"cannot read trace segment {meta_path}: {exc}") from exc
    if meta.get("run", {}).get("run_id") != run_id:
        raise TraceError(f"trace segment {meta_path} belongs to another run")
    if meta["closed"]:
        state = "closed"
    else:
        state = "open" if _alive(meta["host"], int(meta["pid"])) else "died"
    spans = _spans_of(meta_path)
    batches, truncated = read_batches(spans)
    loaded = 0
    for batch in batches:  # one INSERT … SELECT per Arrow batch
        con.register("span_batch", pa.Table.from_batches([batch]))
        try:
            con.execute("BEGIN TRANSACTION")
            con.execute(_INSERT_SPANS, [run_id, meta["segment"]])
            con.execute(_INSERT_LINKS, [run_id])
            con.execute("COMMIT")
        finally:
            con.unregister("span_batch")
        loaded += batch.num_rows
    if truncated[0]:
        log.warning("trace segment ends in a cut-off batch, left out", segment=str(spans))
    return meta | {"state": state, "spans_loaded": loaded, "truncated": truncated[0]}


def _insert_segments(
    con: duckdb.DuckDBPyConnection, run_id: str, segments: list[dict[str, Any]]
) -> None:
    rows = [
        (
            run_id,
            s["segment"],
            s["host"],
            int(s["pid"]),
            s["started_at"],
            s["finished_at"],
            s["state"],
            int(s["spans_ended"]),
            int(s["spans_written"]),
            int(s["spans_dropped"]),
            int(s["spans_failed"]),
            int(s["spans_loaded"]),
            bool(s["truncated"]),
        )
        for s in segments
    ]
    table = pa.Table.from_pylist(
        [dict(zip(_SEGMENT_COLUMNS, row, strict=True)) for row in rows], schema=_SEGMENT_SCHEMA
    )
    con.register("segment_rows", table)
    try:
        con.execute("INSERT INTO segments SELECT * FROM segment_rows")
    finally:
        con.unregister("segment_rows")
    run = segments[0]["run"]
    con.execute(
        """INSERT INTO runs SELECT $1, $2, $3, $4, $5, $6, $7, $8, min(started_at),
            CASE WHEN bool_and(state = 'closed') THEN max(finished_at) END,
            sum(spans_ended), sum(spans_written), sum(spans_dropped), sum(spans_failed),
            sum(spans_loaded), count(*), count(*) FILTER (WHERE state = 'open'),
            count(*) FILTER (WHERE state = 'died')
        FROM segments WHERE run_id = $1""",
        [
            run_id,
            run.get("scenario"),
            run.get("policy"),
            run.get("seed"),
            run.get("store"),
            run.get("git_sha"),
            orjson.dumps(run.get("config") or {}).decode(),
            orjson.dumps(run.get("versions") or {}).decode(),
        ],
    )


_SEGMENT_COLUMNS = (
    "run_id",
    "segment",
    "host",
    "pid",
    "started_at",
    "finished_at",
    "state",
    "spans_ended",
    "spans_written",
    "spans_dropped",
    "spans_failed",
    "spans_loaded",
    "truncated",
)
_SEGMENT_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("segment", pa.string()),
        ("host", pa.string()),
        ("pid", pa.int32()),
        ("started_at", pa.string()),
        ("finished_at", pa.string()),
        ("state", pa.string()),
        ("spans_ended", pa.int64()),
        ("spans_written", pa.int64()),
        ("spans_dropped", pa.int64()),
        ("spans_failed", pa.int64()),
        ("spans_loaded", pa.int64()),
        ("truncated", pa.bool_()),
    ]
)


def open_runs(traces_dir: Path, runs: Sequence[str]) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with views ``runs``, ``segments``, ``spans`` and ``links`` over
    the merged files of ``runs`` (merging them first where needed), for the analyses.

    Raises:
        TraceError: a run is missing or cannot be merged.
    """
    con = duckdb.connect()
    try:
        for i, run_id in enumerate(runs):
            merged = merge_run(traces_dir, run_id)
            path = "'" + str(merged.path).replace("'", "''") + "'"
            con.execute(f"ATTACH {path} AS run{i} (READ_ONLY)")
        for table in TABLES:
            union = " UNION ALL ".join(f"SELECT * FROM run{i}.{table}" for i in range(len(runs)))
            con.execute(f"CREATE TEMP VIEW {table} AS {union}")
    except BaseException:
        con.close()
        raise
    return con
