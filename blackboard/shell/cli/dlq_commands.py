"""``blackboard dlq list|show|replay|purge``: operating the dead-letter topics from a shell."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.deadletters import (
    DeadLetter,
    DeadLetterFilter,
    DeadLetters,
    parse_since,
    replay_backoff_s,
)
from blackboard.errors import ConfigError
from blackboard.logs import get_logger
from blackboard.shell.cli.main import print_json

log = get_logger("dlq")


def add_dlq_parser(sub: Any, store_args: Any) -> None:
    """Add ``dlq`` and its subcommands to the CLI's subparsers."""
    dlq = sub.add_parser("dlq", help="list, show, replay and purge dead letters")
    actions = dlq.add_subparsers(dest="dlq_command", required=True)

    def selection(p: argparse.ArgumentParser, *, ids: bool) -> None:
        if ids:
            p.add_argument("ids", nargs="*", metavar="ID", help="entry ids or artifact ids")
        p.add_argument("--type", help="only this artifact type")
        p.add_argument("--agent", help="only what this agent dead-lettered")
        p.add_argument("--stage", help="only this stage (deserialize, validate, process, ...)")
        p.add_argument("--since", help="only newer: 15m, 2h, 1d or an ISO time")
        store_args(p)

    p = actions.add_parser("list", help="dead letters not yet replayed or purged")
    selection(p, ids=False)
    p.add_argument("--all", action="store_true", help="include replayed and purged ones")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = actions.add_parser("show", help="one dead letter: headers, payload, stack trace")
    p.add_argument("id", metavar="ID", help="entry id (type:partition:offset) or artifact id")
    store_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = actions.add_parser("replay", help="re-publish dead letters to their original topics")
    selection(p, ids=True)
    p.add_argument("--all", action="store_true", help="every dead letter the filters select")
    p.add_argument("--dry-run", action="store_true", help="say what would be replayed")
    p.add_argument("--rate", type=float, default=None, help="at most this many per second")
    p.add_argument(
        "--auto",
        action="store_true",
        help="keep replaying new dead letters, each after a backoff, until Ctrl-C/SIGTERM",
    )
    p.add_argument(
        "--backoff", default="30s", help="--auto: wait after a failure, doubled per replay"
    )
    p.add_argument("--max-replays", type=int, default=3, help="--auto: give up after this many")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = actions.add_parser("purge", help="mark dead letters as handled, never to be replayed")
    selection(p, ids=True)
    p.add_argument("--all", action="store_true", help="every dead letter the filters select")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def cmd_dlq(args: argparse.Namespace) -> int:
    """Dispatch ``blackboard dlq <action>``."""
    settings = BlackboardSettings.from_env(
        url=args.store, prefix=args.prefix, partitions=args.partitions
    )
    with Blackboard(settings.url, settings=settings) as board:
        dlq = DeadLetters(board)
        action = {"list": _list, "show": _show, "replay": _replay, "purge": _purge}
        return action[args.dlq_command](dlq, args)


def _filter(args: argparse.Namespace, *, include_settled: bool = False) -> DeadLetterFilter:
    return DeadLetterFilter(
        type=args.type,
        agent=args.agent,
        stage=args.stage,
        since=parse_since(args.since) if args.since else None,
        ids=frozenset(getattr(args, "ids", ()) or ()),
        include_settled=include_settled,
    )


def _selected(dlq: DeadLetters, args: argparse.Namespace, verb: str) -> list[DeadLetter]:
    return dlq.named(_filter(args), everything=args.all, verb=verb, all_word="--all")


def _list(dlq: DeadLetters, args: argparse.Namespace) -> int:
    entries = dlq.entries(_filter(args, include_settled=args.all))
    if args.json:
        print_json({"dead_letters": [e.summary() for e in entries]})
        return 0
    sys.stdout.write(
        f"{'ID':<36} {'AGENT':<16} {'STAGE':<11} {'TRY':>3} {'FAILED AT (UTC)':<19}  ERROR\n"
    )
    for e in entries:
        when = datetime.fromtimestamp(e.failed_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        error = f"{e.header('bb.dlq.exception.class').rsplit('.', 1)[-1]}: "
        error += e.header("bb.dlq.exception.message")
        mark = f" [{e.disposition}]" if e.disposition else ""
        sys.stdout.write(
            f"{e.entry_id:<36} {e.agent:<16} {e.stage:<11} {e.attempt:>3} {when:<19}  "
            f"{error[:80]}{mark}\n"
        )
    return 0


def _show(dlq: DeadLetters, args: argparse.Namespace) -> int:
    entries = dlq.get(args.id)
    if not entries:
        raise ConfigError(f"no dead letter with id {args.id}")
    docs = [e.details() for e in entries]
    if args.json:
        print_json({"dead_letters": docs})
        return 0
    for doc in docs:
        for key in ("id", "artifact_id", "type", "agent", "group", "stage", "attempt", "replays"):
            sys.stdout.write(f"{key:<14} {doc[key]}\n")
        sys.stdout.write(f"{'failed_at':<14} {doc['failed_at']}\n")
        sys.stdout.write(f"{'disposition':<14} {doc['disposition'] or '-'}\n")
        sys.stdout.write(f"{'error':<14} {doc['exception']}: {doc['message']}\n")
        sys.stdout.write("headers:\n")
        for name, value in dict(doc["headers"]).items():  # type: ignore[call-overload]
            sys.stdout.write(f"  {name}: {value}\n")
        sys.stdout.write(f"payload: {doc['payload']}\n")
        sys.stdout.write(f"stack trace:\n{doc['stacktrace']}\n")
    return 0


def _replay(dlq: DeadLetters, args: argparse.Namespace) -> int:
    if args.auto:
        return _auto_replay(dlq, args)
    entries = _selected(dlq, args, "replay")
    report = dlq.replay(entries, dry_run=args.dry_run, rate=args.rate)
    if args.json:
        print_json(
            {"replayed": report.replayed, "skipped": report.skipped, "dry_run": report.dry_run}
        )
    else:
        verb = "would replay" if report.dry_run else "replayed"
        sys.stdout.write(f"{verb} {len(report.replayed)} dead letter(s)\n")
        for entry_id in report.replayed:
            sys.stdout.write(f"  {entry_id}\n")
    return 0


def _auto_replay(dlq: DeadLetters, args: argparse.Namespace) -> int:
    """Replay every selected dead letter once its backoff has passed, until interrupted."""
    base_s = max(0.0, time.time() - parse_since(args.backoff))
    stop = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGTERM, _stop)
    replayed: list[str] = []
    try:
        while not stop:
            due = [
                e
                for e in dlq.entries(_filter(args))
                if e.replays < args.max_replays
                and time.time() >= e.failed_at + replay_backoff_s(e, base_s)
            ]
            if due and not args.dry_run:
                report = dlq.replay(due, rate=args.rate)
                replayed += report.replayed
                log.info("replayed", count=len(report.replayed), total=len(replayed))
            if args.dry_run:
                replayed = [e.entry_id for e in due]
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print_json({"replayed": replayed, "dry_run": bool(args.dry_run)})
    else:
        sys.stdout.write(f"replayed {len(replayed)} dead letter(s)\n")
    return 0


def _purge(dlq: DeadLetters, args: argparse.Namespace) -> int:
    entries = _selected(dlq, args, "purge")
    if entries and not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"refusing to purge {len(entries)} dead letter(s) without --yes")
        sys.stderr.write(f"purge {len(entries)} dead letter(s)? [y/N] ")
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            sys.stderr.write("nothing purged\n")
            return 1
    purged = dlq.purge(entries)
    if args.json:
        print_json({"purged": purged})
    else:
        sys.stdout.write(f"purged {len(purged)} dead letter(s)\n")
    return 0


__all__: Sequence[str] = ["add_dlq_parser", "cmd_dlq"]
