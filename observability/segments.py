"""Where a run's traces live, and merging its segments into one file for analysis.

::

    <traces>/<run_id>/segments/<segment>.duckdb   one per process that traced (written live)
    <traces>/<run_id>/run.duckdb                  the merge of the run's closed segments

A DuckDB file open for writing cannot be opened by any other process, not even read-only
(DESIGN.md §6): each process writes its own segment, and analyses read the merged file, which
:func:`merge_run` rebuilds whenever a segment is newer. A segment still being written is left
out of the merge, and the run's summary says how many were.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from blackboard.errors import TraceError
from blackboard.logs import get_logger
from observability.schema import DDL, RUN_COLUMNS, TABLES

log = get_logger("traces")

SEGMENTS_DIR = "segments"
MERGED_FILE = "run.duckdb"


def segment_name() -> str:
    """A name for this process's segment: host, pid and a random suffix."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40]
    return f"{host or 'host'}-{os.getpid()}-{os.urandom(2).hex()}"


def segment_path(traces_dir: Path, run_id: str, segment: str) -> Path:
    """The file of one process's segment of a run."""
    return traces_dir / run_id / SEGMENTS_DIR / f"{segment}.duckdb"


def segment_files(traces_dir: Path, run_id: str) -> list[Path]:
    """The segment files of a run, by name."""
    return sorted((traces_dir / run_id / SEGMENTS_DIR).glob("*.duckdb"))


def list_runs(traces_dir: Path) -> list[str]:
    """The runs under ``traces_dir``, oldest first (by their newest segment's time).

    Raises:
        TraceError: the directory does not exist.
    """
    if not traces_dir.is_dir():
        raise TraceError(f"no traces directory {traces_dir}")
    runs: list[tuple[float, str]] = []
    for entry in traces_dir.iterdir():
        files = segment_files(traces_dir, entry.name) if entry.is_dir() else []
        if files:
            runs.append((max(f.stat().st_mtime for f in files), entry.name))
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


@dataclass(frozen=True, slots=True)
class Merged:
    """A merged run file.

    Attributes:
        path: the file.
        segments: segments merged into it.
        open_segments: segments left out because a process still had them open.
    """

    path: Path
    segments: int
    open_segments: int


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def merge_run(traces_dir: Path, run_id: str, *, force: bool = False) -> Merged:
    """Merge a run's segments into ``<traces>/<run_id>/run.duckdb`` (rebuilt only when a
    segment is newer than it, or ``force``) and return it.

    The merged ``runs`` row sums the segments' counts (spans ended, written, dropped, failed)
    and says how many segments were merged and how many were still open.

    Raises:
        TraceError: the run has no segments, or none could be read.
    """
    files = segment_files(traces_dir, run_id)
    if not files:
        raise TraceError(f"no run {run_id!r} in {traces_dir}")
    target = traces_dir / run_id / MERGED_FILE
    if not force and target.exists():
        newest = max(f.stat().st_mtime for f in files)
        if target.stat().st_mtime >= newest:
            with duckdb.connect(str(target), read_only=True) as con:
                rows = con.execute(
                    "SELECT segments, segments_open FROM runs WHERE run_id = $1", [run_id]
                ).fetchall()
            row = rows[0] if rows else None
            if row is not None and not row[1]:
                return Merged(target, int(row[0]), 0)
    tmp = target.with_name(f".{MERGED_FILE}.{os.getpid()}.{os.urandom(3).hex()}")
    merged = skipped = 0
    try:
        with duckdb.connect(str(tmp)) as con:
            for statement in DDL:
                con.execute(statement)
            con.execute("CREATE TEMP TABLE seg_runs AS SELECT * FROM runs")
            for i, path in enumerate(files):
                alias = f"seg{i}"
                try:
                    con.execute(f"ATTACH {_quote(path)} AS {alias} (READ_ONLY)")
                except duckdb.IOException as exc:  # still open for writing by its process
                    log.warning(
                        "trace segment still open, left out", segment=str(path), error=str(exc)
                    )
                    skipped += 1
                    continue
                except duckdb.Error as exc:
                    log.warning(
                        "trace segment unreadable, left out", segment=str(path), error=str(exc)
                    )
                    skipped += 1
                    continue
                try:
                    con.execute("BEGIN TRANSACTION")
                    for table in TABLES:
                        into = "seg_runs" if table == "runs" else table
                        con.execute(f"INSERT INTO {into} SELECT * FROM {alias}.{table}")
                    con.execute("COMMIT")
                finally:
                    con.execute(f"DETACH {alias}")
                merged += 1
            if not merged:
                raise TraceError(
                    f"none of the {len(files)} segment(s) of run {run_id!r} could be read "
                    "(still being written?)"
                )
            con.execute(
                f"""INSERT INTO runs ({", ".join(RUN_COLUMNS)})
                WITH meta AS (
                    SELECT run_id, any_value(scenario) AS scenario, any_value(policy) AS policy,
                        any_value(seed) AS seed, any_value(store) AS store,
                        any_value(git_sha) AS git_sha, any_value(config) AS config,
                        any_value(versions) AS versions
                    FROM seg_runs GROUP BY run_id),
                seg AS (
                    SELECT run_id, min(started_at) AS started_at,
                        CASE WHEN bool_and(closed) THEN max(finished_at) END AS finished_at,
                        sum(spans_ended) AS ended, sum(spans_written) AS written,
                        sum(spans_dropped) AS dropped, sum(spans_failed) AS failed,
                        count(*) AS segments
                    FROM segments GROUP BY run_id)
                SELECT run_id, scenario, policy, seed, store, git_sha, config, versions,
                    started_at, finished_at, ended, written, dropped, failed, segments, $1
                FROM meta JOIN seg USING (run_id)""",
                [skipped],
            )
            con.execute("CHECKPOINT")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Merged(target, merged, skipped)


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
            con.execute(f"ATTACH {_quote(merged.path)} AS run{i} (READ_ONLY)")
        for table in TABLES:
            union = " UNION ALL ".join(f"SELECT * FROM run{i}.{table}" for i in range(len(runs)))
            con.execute(f"CREATE TEMP VIEW {table} AS {union}")
    except BaseException:
        con.close()
        raise
    return con
