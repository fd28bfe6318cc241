"""Canned analyses of traced runs: each takes a connection from
:func:`observability.segments.open_runs` and a run id and returns an Arrow table
(``table.to_pandas()`` gives a DataFrame where pandas is installed).

======================  ===========================================================
:func:`summary`         one row: the run, span counts (ended vs written: lost spans
                        are named), throughput, dead letters, latency percentiles
:func:`makespan`        per correlation id: first span start to last span end
:func:`red`             per agent and time bucket: rate, errors, duration
:func:`latency`         p50/p95/p99 of process spans per agent, artifact type, policy
:func:`queue_vs_service` per agent: queue wait (poll to handler) vs service time
:func:`failures`        retries and dead letters per agent, stage and error type
:func:`compare`         two runs (e.g. two policies): means with confidence intervals
:func:`process_spans`   the process spans themselves, times relative to run start
:func:`llm_costs`       model calls per agent, model, tenant, correlation or policy:
                        tokens, cost, re-asks, failures (:mod:`observability.llm_costs`)
======================  ===========================================================

Times are milliseconds; ``*_ms`` columns relative to the run's first span.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blackboard.errors import TraceError
from observability.compare import compare
from observability.duck import Connection, check_run, query
from observability.llm_costs import llm_costs

if TYPE_CHECKING:
    import pyarrow as pa


def runs(con: Connection) -> pa.Table:
    """Every run opened: id, scenario, policy, seed, store, commit, times, span counts."""
    return query(
        con,
        """SELECT run_id, scenario, policy, seed, store, git_sha, started_at, finished_at,
            spans_ended, spans_written, spans_ended - spans_written AS spans_lost, segments,
            segments_open, segments_died
        FROM runs ORDER BY started_at""",
        [],
    )


def summary(con: Connection, run_id: str) -> pa.Table:
    """One row describing the run. ``complete`` is false, and ``note`` says why, when spans
    ended but were not written (dropped at a full queue, failed writes, a process that died
    with spans queued), a segment is still being written or was never closed, or the segments
    hold another number of spans than recorded.

    Raises:
        TraceError: the run is not there.
    """
    check_run(con, run_id)
    return query(
        con,
        """WITH s AS (SELECT * FROM spans WHERE run_id = $1),
        p AS (SELECT * FROM s WHERE operation = 'process'),
        figures AS (SELECT
            (SELECT (max(end_ns) - min(start_ns)) / 1e6 FROM s) AS wall_ms,
            (SELECT count(DISTINCT correlation_id) FROM s) AS correlation_ids,
            (SELECT count(DISTINCT trace_id) FROM s WHERE correlation_id IS NOT NULL) AS traces,
            (SELECT count(DISTINCT worker) FROM s) AS workers,
            (SELECT count(*) FROM p WHERE outcome = 'ok') AS processed,
            (SELECT count(*) FROM p WHERE outcome = 'retried') AS retries,
            (SELECT count(*) FROM p WHERE outcome = 'dead_letter') AS dead_letters,
            (SELECT count(*) FROM s WHERE operation = 'settle') AS commits,
            (SELECT quantile_cont(duration_ms, 0.5) FROM p) AS process_p50_ms,
            (SELECT quantile_cont(duration_ms, 0.95) FROM p) AS process_p95_ms,
            (SELECT quantile_cont(duration_ms, 0.99) FROM p) AS process_p99_ms)
        SELECT r.run_id, r.scenario, r.policy, r.seed, r.store, r.git_sha, r.started_at,
            r.finished_at, f.wall_ms, f.workers, r.segments, r.segments_open, r.segments_died,
            r.spans_ended, r.spans_written, r.spans_dropped, r.spans_failed,
            r.spans_ended - r.spans_written AS spans_lost, r.spans_loaded,
            f.correlation_ids, f.traces, f.processed, f.retries, f.dead_letters, f.commits,
            f.processed / nullif(f.wall_ms / 1000.0, 0) AS processed_per_s,
            f.process_p50_ms, f.process_p95_ms, f.process_p99_ms,
            (r.spans_ended = r.spans_written AND r.spans_loaded = r.spans_written
                AND r.segments_open = 0 AND r.segments_died = 0) AS complete,
            nullif(concat_ws('; ',
                CASE WHEN r.spans_ended <> r.spans_written THEN
                    format('{} of {} spans ended were not written ({} dropped at a full queue, '
                        || '{} in failed writes, the rest still queued when counted)',
                        r.spans_ended - r.spans_written, r.spans_ended, r.spans_dropped,
                        r.spans_failed) END,
                CASE WHEN r.segments_open > 0 THEN
                    format('{} segment(s) still being written: the run is partial',
                        r.segments_open) END,
                CASE WHEN r.segments_died > 0 THEN
                    format('{} segment(s) never closed (the process died): their last '
                        || 'recorded counts stand', r.segments_died) END,
                CASE WHEN r.spans_loaded <> r.spans_written AND r.segments_open = 0 THEN
                    format('{} spans found in the segments but {} recorded as written',
                        r.spans_loaded, r.spans_written) END
            ), '') AS note
        FROM runs r, figures f WHERE r.run_id = $1""",
        [run_id],
    )


def makespan(con: Connection, run_id: str) -> pa.Table:
    """Per correlation id: start and end (ms from the run's first span), makespan, spans,
    process spans, agents, errors and traces (1 when the correlation id is one connected
    trace). ``errors`` counts failed spans other than model calls: a failed call that
    failed its attempt counts once, as the attempt, and one the handler got over is no error
    of the correlation (``traces cost`` counts failed calls)."""
    check_run(con, run_id)
    return query(
        con,
        """WITH s AS (SELECT * FROM spans WHERE run_id = $1),
        t0 AS (SELECT min(start_ns) AS t0 FROM s)
        SELECT correlation_id, (min(start_ns) - any_value(t0)) / 1e6 AS start_ms,
            (max(end_ns) - any_value(t0)) / 1e6 AS end_ms,
            (max(end_ns) - min(start_ns)) / 1e6 AS makespan_ms, count(*) AS spans,
            count(*) FILTER (WHERE operation = 'process') AS processes,
            count(DISTINCT agent) FILTER (WHERE operation = 'process') AS agents,
            count(*) FILTER (WHERE status = 'ERROR' AND operation IS DISTINCT FROM 'chat')
                AS errors,
            count(DISTINCT trace_id) AS traces
        FROM s, t0 WHERE correlation_id IS NOT NULL
        GROUP BY correlation_id ORDER BY start_ms, correlation_id""",
        [run_id],
    )


def red(con: Connection, run_id: str, bucket_ms: float = 1000.0) -> pa.Table:
    """Rate, errors and duration of process spans per agent and time bucket (by end time,
    ``bucket_ms`` wide, from the run's first span).

    Raises:
        TraceError: ``bucket_ms`` is not positive.
    """
    if not bucket_ms > 0:
        raise TraceError(f"bucket must be positive, got {bucket_ms} ms")
    check_run(con, run_id)
    return query(
        con,
        """WITH s AS (SELECT * FROM spans WHERE run_id = $1),
        t0 AS (SELECT min(start_ns) AS t0 FROM s)
        SELECT agent, floor((end_ns - t0) / 1e6 / $2) * $2 AS bucket_ms,
            count(*) AS requests, count(*) / ($2 / 1000.0) AS rate_per_s,
            count(*) FILTER (WHERE status = 'ERROR') AS errors,
            count(*) FILTER (WHERE status = 'ERROR') / count(*) AS error_ratio,
            avg(duration_ms) AS mean_ms, quantile_cont(duration_ms, 0.5) AS p50_ms,
            quantile_cont(duration_ms, 0.95) AS p95_ms, quantile_cont(duration_ms, 0.99) AS p99_ms
        FROM s, t0 WHERE operation = 'process'
        GROUP BY agent, bucket_ms ORDER BY agent, bucket_ms""",
        [run_id, float(bucket_ms)],
    )


def latency(con: Connection, run_id: str) -> pa.Table:
    """Process span durations (every attempt) per agent, artifact type and policy: count,
    mean, p50, p95, p99, max."""
    check_run(con, run_id)
    return query(
        con,
        """SELECT s.agent, s.artifact_type, r.policy, count(*) AS n,
            avg(s.duration_ms) AS mean_ms, quantile_cont(s.duration_ms, 0.5) AS p50_ms,
            quantile_cont(s.duration_ms, 0.95) AS p95_ms,
            quantile_cont(s.duration_ms, 0.99) AS p99_ms, max(s.duration_ms) AS max_ms
        FROM spans s JOIN runs r USING (run_id)
        WHERE s.run_id = $1 AND s.operation = 'process'
        GROUP BY ALL ORDER BY s.agent, s.artifact_type""",
        [run_id],
    )


def queue_vs_service(con: Connection, run_id: str) -> pa.Table:
    """Per agent: queue wait (poll returned → handler started) against service time (the
    process span), and the share of the total spent waiting."""
    check_run(con, run_id)
    return query(
        con,
        """SELECT agent, count(*) AS n,
            avg(queue_wait_ms) AS queue_mean_ms, quantile_cont(queue_wait_ms, 0.5) AS queue_p50_ms,
            quantile_cont(queue_wait_ms, 0.95) AS queue_p95_ms,
            quantile_cont(queue_wait_ms, 0.99) AS queue_p99_ms,
            avg(duration_ms) AS service_mean_ms,
            quantile_cont(duration_ms, 0.5) AS service_p50_ms,
            quantile_cont(duration_ms, 0.95) AS service_p95_ms,
            quantile_cont(duration_ms, 0.99) AS service_p99_ms,
            sum(queue_wait_ms) / nullif(sum(queue_wait_ms) + sum(duration_ms), 0) AS queue_share
        FROM spans WHERE run_id = $1 AND operation = 'process' AND queue_wait_ms IS NOT NULL
        GROUP BY agent ORDER BY agent""",
        [run_id],
    )


def failures(con: Connection, run_id: str) -> pa.Table:
    """Failed attempts per agent, stage and error type: retried, dead-lettered, artifacts
    that succeeded on a later attempt (``recovered``) and the highest attempt seen."""
    check_run(con, run_id)
    return query(
        con,
        """WITH p AS (SELECT * FROM spans WHERE run_id = $1 AND operation = 'process'),
        ok AS (SELECT DISTINCT agent, artifact_id FROM p WHERE outcome = 'ok')
        SELECT p.agent, p.error_stage, p.error_type,
            count(*) FILTER (WHERE p.outcome = 'retried') AS retries,
            count(*) FILTER (WHERE p.outcome = 'dead_letter') AS dead_letters,
            count(DISTINCT p.artifact_id) FILTER (
                WHERE p.outcome = 'retried' AND ok.artifact_id IS NOT NULL) AS recovered,
            max(p.attempt) AS max_attempt, count(DISTINCT p.artifact_id) AS artifacts
        FROM p LEFT JOIN ok ON ok.agent = p.agent AND ok.artifact_id = p.artifact_id
        WHERE p.status = 'ERROR'
        GROUP BY ALL ORDER BY p.agent, dead_letters DESC, retries DESC""",
        [run_id],
    )


def process_spans(con: Connection, run_id: str) -> pa.Table:
    """The run's process spans, ordered by start: worker, agent, times (ms from the run's
    first span), duration, queue wait, status, outcome and the artifact."""
    check_run(con, run_id)
    return query(
        con,
        """WITH s AS (SELECT * FROM spans WHERE run_id = $1),
        t0 AS (SELECT min(start_ns) AS t0 FROM s)
        SELECT worker, agent, (start_ns - t0) / 1e6 AS start_ms, (end_ns - t0) / 1e6 AS end_ms,
            duration_ms, queue_wait_ms, status, outcome, attempt, artifact_type, artifact_id,
            correlation_id, trace_id, span_id
        FROM s, t0 WHERE operation = 'process' ORDER BY start_ms""",
        [run_id],
    )


# -- comparing two runs -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """A canned analysis as ``blackboard traces`` names it.

    Attributes:
        name: the query's name on the command line.
        help: one line saying what it shows.
        runs: how many runs it takes (0: every run).
        run: the analysis, given the connection, the run ids and the options.
        more: it takes more runs than ``runs`` too, if named (summed over them).
    """

    name: str
    help: str
    runs: int
    run: Callable[[Connection, Sequence[str], dict[str, Any]], pa.Table]
    more: bool = False


QUERIES: dict[str, Query] = {
    q.name: q
    for q in (
        Query("runs", "every run: scenario, policy, seed, span counts", 0, lambda c, r, o: runs(c)),
        Query("summary", "one run: counts, lost spans, throughput, latency", 1,
              lambda c, r, o: summary(c, r[0])),
        Query("makespan", "per correlation id: first start to last end", 1,
              lambda c, r, o: makespan(c, r[0])),
        Query("red", "per agent and time bucket: rate, errors, duration", 1,
              lambda c, r, o: red(c, r[0], o.get("bucket_ms", 1000.0))),
        Query("latency", "p50/p95/p99 per agent, artifact type and policy", 1,
              lambda c, r, o: latency(c, r[0])),
        Query("queue", "per agent: queue wait vs service time", 1,
              lambda c, r, o: queue_vs_service(c, r[0])),
        Query("failures", "retries and dead letters per agent, stage, error", 1,
              lambda c, r, o: failures(c, r[0])),
        Query("compare", "run B vs run A with confidence intervals (two runs)", 2,
              lambda c, r, o: compare(c, r[0], r[1], o.get("confidence", 0.95))),
        Query("spans", "the process spans of one run", 1, lambda c, r, o: process_spans(c, r[0])),
        Query("cost", "model calls: tokens, cost, re-asks, failures (--by)", 1,
              lambda c, r, o: llm_costs(c, r, o.get("by", "agent")), more=True),
    )
}  # fmt: skip
