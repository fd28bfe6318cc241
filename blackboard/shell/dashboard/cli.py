"""``blackboard dashboard``: its options, and start-up (settings checked before the store is
opened, so a refused configuration stops with one line)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blackboard.shell.dashboard.settings import API_KEY_ENV, DashboardSettings


def add_dashboard_parser(sub: Any, store_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``dashboard`` to the CLI's subparsers."""
    p = sub.add_parser(
        "dashboard",
        help="web dashboard: lag and health, topics, dead letters, traced runs",
        description=f"Changes (replay, purge) need the key in ${API_KEY_ENV} (X-API-Key "
        "header); reads need it too unless bound to loopback, and binding another address "
        "without a key is refused.",
    )
    store_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8321, help="port (default 8321; 0: any free)")
    p.add_argument(
        "--traces",
        metavar="DIR",
        default=None,
        help="traced runs for the runs page (default: $BLACKBOARD_TRACES)",
    )
    p.add_argument(
        "--audit-log",
        metavar="FILE",
        default="blackboard-audit.jsonl",
        help="JSON-lines file every action is appended to (default ./blackboard-audit.jsonl)",
    )
    p.add_argument("--interval", type=float, default=2.0, help="seconds between samples (2)")
    p.add_argument("--window", type=int, default=10, help="samples in the health window (10)")
    p.add_argument(
        "--lag-threshold",
        type=int,
        default=1000,
        help="lag one worker absorbs, for the desired worker count (1000)",
    )


def run_dashboard(args: argparse.Namespace) -> int:
    """Check the settings, open the store and serve until interrupted.

    Raises:
        ConfigError: refused settings (e.g. a non-loopback address without a key).
    """
    from blackboard.blackboard import Blackboard, BlackboardSettings
    from blackboard.shell.dashboard.server import serve

    settings = DashboardSettings.from_env(
        host=args.host,
        port=args.port,
        traces=Path(args.traces) if args.traces else None,
        audit_log=Path(args.audit_log),
        sample_interval_s=args.interval,
        window=args.window,
        lag_threshold=args.lag_threshold,
    )
    board_settings = BlackboardSettings.from_env(
        url=args.store, prefix=args.prefix, partitions=args.partitions
    )
    with Blackboard(board_settings.url, settings=board_settings) as board:
        serve(board, settings)
    return 0
