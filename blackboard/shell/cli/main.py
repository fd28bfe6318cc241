"""The ``blackboard`` command line.

stdout carries data only (``--json`` prints exactly one JSON document; ``tail`` prints one JSON
object a line); logs and errors go to stderr. A bad setting or input stops with one line
naming it and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from blackboard.errors import BlackboardError
from blackboard.logs import configure_logging

EXIT_USAGE = 2


def print_json(doc: Any) -> None:
    """Write ``doc`` to stdout as one JSON document."""
    sys.stdout.write(
        orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"
    )
    sys.stdout.flush()


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store", metavar="URL", help="store URL (default: $BLACKBOARD_URL or memory://)"
    )
    p.add_argument("--prefix", help="topic prefix (default: $BLACKBOARD_PREFIX or bb)")
    p.add_argument("--partitions", type=int, help="partitions per topic (default 8)")


def _app_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--app",
        metavar="MODULE:APP",
        default=None,
        help="the app whose artifact types to use (default: the demo's types)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from blackboard.shell.cli.trace_commands import add_traces_parser, add_tracing_options

    parser = argparse.ArgumentParser(
        prog="blackboard", description="A blackboard of typed artifacts for agents."
    )
    parser.add_argument("--log-level", default=None, help="debug, info, warning or error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the research workflow demo on the embedded store")
    p.add_argument(
        "--ideas", type=int, default=None, help="ideas to review (default 50; 3 with --llm)"
    )
    p.add_argument(
        "--llm",
        metavar="MODEL",
        help="LLM reviewers and chair: 'local' (SmolLM2 in process) or a model string such as "
        "openai:gpt-4o-mini (its API key from the provider's usual variable)",
    )
    p.add_argument("--seed", type=int, default=7, help="seed of the simulated latencies and scores")
    p.add_argument("--latency-ms", type=float, default=20.0, help="median simulated agent latency")
    p.add_argument(
        "--store", metavar="URL", default="memory://", help="store URL (default memory://)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    add_tracing_options(p)

    p = sub.add_parser("types", help="list artifact types and their JSON Schema")
    _app_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON document with the schemas")

    p = sub.add_parser("worker", help="run an app's agents until SIGTERM or Ctrl-C")
    p.add_argument("app_ref", metavar="MODULE:APP")
    _store_args(p)
    p.add_argument("--agents", help="comma-separated agent names (default: all)")
    p.add_argument("--slot", default="0", help="this worker's slot label (default 0)")
    p.add_argument(
        "--grace", type=float, default=30.0, help="seconds in-flight handlers get at shutdown"
    )
    p.add_argument(
        "--batch",
        action="append",
        metavar="[AGENT/]TYPE=SIZE:WINDOW",
        help="override a batch agent's size and window for a type, e.g. Order=50:200ms "
        "(comma-separated or repeated; replaces $BLACKBOARD_BATCH)",
    )
    add_tracing_options(p)

    p = sub.add_parser("publish", help="publish artifacts (JSON argument, or JSON lines on stdin)")
    p.add_argument("type_name", metavar="TYPE")
    p.add_argument(
        "data", nargs="?", help="the payload as JSON; '-' or absent reads JSON lines from stdin"
    )
    _app_arg(p)
    _store_args(p)
    p.add_argument("--correlation-id")
    p.add_argument("--key", help="partition key (default: the correlation id)")
    p.add_argument("--tenant", default="default")
    p.add_argument(
        "--json", action="store_true", help="print one JSON document (default: one line each)"
    )

    p = sub.add_parser("tail", help="print the artifacts of a type as JSON lines")
    p.add_argument("type_name", metavar="TYPE")
    _store_args(p)
    p.add_argument("-n", "--limit", type=int, default=None, help="the last N per partition")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new artifacts")

    p = sub.add_parser(
        "lag", help="lag per group partition; Burrow health and desired workers over a window"
    )
    _store_args(p)
    from blackboard.shell.cli.lag_command import add_lag_arguments

    add_lag_arguments(p)

    from blackboard.shell.cli.dlq_commands import add_dlq_parser

    add_dlq_parser(sub, _store_args)
    add_traces_parser(sub)
    from blackboard.shell.experiment import add_experiment_parser

    add_experiment_parser(sub)
    from blackboard.shell.dashboard.cli import add_dashboard_parser

    add_dashboard_parser(sub, _store_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``blackboard`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    from blackboard.shell.cli import commands

    try:
        configure_logging(args.log_level)
        handler = getattr(commands, f"cmd_{args.command}")
        code: int = handler(args)
        return code
    except BlackboardError as exc:
        sys.stderr.write(f"blackboard: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
