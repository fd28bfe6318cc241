"""``blackboard traces``: canned analyses of traced runs; and ``--traces`` for demo and worker."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blackboard.errors import ConfigError
from blackboard.logs import get_logger
from blackboard.shell.cli.main import print_json

if TYPE_CHECKING:
    from observability.tracing import Tracing

log = get_logger("traces")

#: The query names (also in observability.analyses.QUERIES, which imports DuckDB: kept apart
#: so the parser builds without it).
QUERY_NAMES = (
    "runs",
    "summary",
    "makespan",
    "red",
    "latency",
    "queue",
    "failures",
    "compare",
    "spans",
    "cost",
)
#: What ``traces cost --by`` groups by (also observability.llm_costs.GROUPS).
COST_GROUPS = ("agent", "model", "tenant", "correlation", "policy")
DEFAULT_DIR = "traces"


def add_tracing_options(p: argparse.ArgumentParser) -> None:
    """``--traces DIR`` and ``--run-id`` for commands that can trace what they run."""
    p.add_argument(
        "--traces",
        metavar="DIR",
        default=None,
        help="trace the run into DIR (default: $BLACKBOARD_TRACES; no tracing if neither)",
    )
    p.add_argument(
        "--run-id",
        default=None,
        help="run id to trace under (default: $BLACKBOARD_RUN_ID or a new one; "
        "processes of one run share it)",
    )


def add_traces_parser(sub: Any) -> None:
    """Add ``traces`` to the CLI's subparsers."""
    p = sub.add_parser(
        "traces",
        help="canned analyses of traced runs (spans in DuckDB)",
        description="Canned analyses of traced runs. cost: what the model calls (chat spans) "
        "used, per --by group: calls, failed calls, input and output tokens, cost in USD "
        "(summed over the priced calls; calls the price tables could not price count as "
        "'unpriced') and re-asks; --json adds requests and cache read/write tokens.",
    )
    p.add_argument("query", metavar="QUERY", help=", ".join(QUERY_NAMES))
    p.add_argument(
        "--run",
        action="append",
        metavar="RUN",
        help="run id; compare takes two (A then B), cost one or more (summed); "
        "default: the newest run(s)",
    )
    p.add_argument(
        "--traces",
        metavar="DIR",
        default=None,
        help=f"traces directory (default: $BLACKBOARD_TRACES or ./{DEFAULT_DIR})",
    )
    p.add_argument("--bucket-ms", type=float, default=1000.0, help="red: bucket width (1000)")
    p.add_argument(
        "--confidence", type=float, default=0.95, help="compare: interval confidence (0.95)"
    )
    p.add_argument(
        "--by",
        default="agent",
        metavar="KEY",
        help="cost: group by " + ", ".join(COST_GROUPS) + " (default agent). A call's policy "
        "is the scheduling policy named by the decision (bb.policy.decision) of the process "
        "span it ran in; else, for an attempt a batch or join release or a retry-budget "
        "deferral started, the policy the same agent's other attempts in that worker name; "
        "else the run's policy label",
    )
    p.add_argument("--limit", type=int, default=50, help="rows printed without --json (50)")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def tracing_dir(value: str | None) -> str | None:
    """The traces directory a command was given (``--traces``, else ``BLACKBOARD_TRACES``).

    Raises:
        ConfigError: a run variable is invalid.
    """
    from observability.settings import RunSettings

    traces = RunSettings.from_env(traces=value or None).traces
    return None if traces is None else str(traces)


def start_command_tracing(
    args: argparse.Namespace,
    *,
    scenario: str,
    store: str,
    config: Mapping[str, Any],
    seed: int | None = None,
) -> Tracing | None:
    """Start tracing for ``worker`` when ``--traces`` or ``BLACKBOARD_TRACES`` says so."""
    directory = tracing_dir(args.traces)
    if directory is None:
        return None
    from observability.runs import RunInfo
    from observability.tracing import start_tracing

    run = RunInfo.create(
        scenario=scenario, seed=seed, store=store, config=config, run_id=args.run_id
    )
    tracing = start_tracing(directory, run)
    log.info("tracing", run_id=run.run_id, segment=str(tracing.path))
    return tracing


def cmd_traces(args: argparse.Namespace) -> int:
    """Run one canned analysis and print it (``--json``: one document)."""
    if args.query not in QUERY_NAMES:
        raise ConfigError(f"unknown query {args.query!r}; choose one of {', '.join(QUERY_NAMES)}")
    if args.limit < 0:
        raise ConfigError(f"--limit must be at least 0, got {args.limit}")
    if args.by not in COST_GROUPS:
        raise ConfigError(f"unknown --by {args.by!r}; choose one of {', '.join(COST_GROUPS)}")
    from observability import report, segments
    from observability.analyses import QUERIES

    query = QUERIES[args.query]
    directory = Path(tracing_dir(args.traces) or DEFAULT_DIR)
    chosen: list[str] = list(args.run or [])
    if query.runs == 0:
        runs = chosen or segments.list_runs(directory)
    elif chosen:
        if len(chosen) != query.runs and not (query.more and len(chosen) > query.runs):
            more = " or more" if query.more else ""
            raise ConfigError(f"{query.name} takes {query.runs}{more} run(s), got {len(chosen)}")
        runs = chosen
    else:
        runs = segments.latest_runs(directory, query.runs)
    con = segments.open_runs(directory, runs)
    try:
        options = {"bucket_ms": args.bucket_ms, "confidence": args.confidence, "by": args.by}
        table = query.run(con, runs, options)
    finally:
        con.close()
    if args.json:
        doc: dict[str, Any] = {
            "query": query.name,
            "traces": str(directory),
            "runs": runs,
            "columns": table.column_names,
            "rows": report.json_rows(table),
        }
        if query.name == "cost":
            doc["by"] = args.by
        print_json(doc)
        return 0
    if query.name == "summary":
        text = report.render_record(table)
    elif query.name == "cost":  # USD to the micro-dollar (a call is often a fraction of a cent)
        from observability.llm_costs import TEXT_COLUMNS

        shown = table.select([table.column_names[0], *TEXT_COLUMNS])
        text = report.render(shown, args.limit, {"cost_usd": 6})
    else:
        text = report.render(table, args.limit)
    sys.stdout.write(text + "\n")
    return 0
