"""Dead letters behind the DLQ page, with the CLI's semantics (``blackboard dlq``): an action
names entry ids, a filter, or ``all``; ids must be open dead letters; replay skips what was
settled meanwhile; a dry run changes nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from blackboard.blackboard import Blackboard
from blackboard.deadletters import DeadLetter, DeadLetterFilter, DeadLetters, parse_since
from blackboard.errors import ConfigError


def selection(query: Mapping[str, Any], *, include_settled: bool = False) -> DeadLetterFilter:
    """A filter from request fields ``type``, ``agent``, ``stage``, ``since`` and ``ids``.

    Raises:
        ConfigError: a bad ``since`` or ``ids``.
    """
    ids = query.get("ids") or ()
    if isinstance(ids, str):
        ids = [i for i in ids.split(",") if i]
    if not isinstance(ids, list | tuple) or not all(isinstance(i, str) for i in ids):
        raise ConfigError("ids must be a list of entry ids or artifact ids")
    since = query.get("since") or None
    return DeadLetterFilter(
        type=query.get("type") or None,
        agent=query.get("agent") or None,
        stage=query.get("stage") or None,
        since=parse_since(str(since)) if since else None,
        ids=frozenset(ids),
        include_settled=include_settled,
    )


def listing(board: Blackboard, query: Mapping[str, Any]) -> dict[str, Any]:
    """Dead letters the query selects (``all``: replayed and purged too), and the types,
    agents and stages present, for the page's filters."""
    dlq = DeadLetters(board)
    include = str(query.get("all", "")).lower() in ("1", "true", "yes")
    entries = dlq.entries(selection(query, include_settled=include))
    everything = dlq.entries(DeadLetterFilter(include_settled=True))
    return {
        "dead_letters": [e.summary() for e in entries],
        "facets": {
            "type": sorted({e.type for e in everything}),
            "agent": sorted({e.agent for e in everything if e.agent}),
            "stage": sorted({e.stage for e in everything if e.stage}),
        },
    }


def details(board: Blackboard, ident: str) -> list[dict[str, Any]]:
    """Every dead letter with entry id or artifact id ``ident``: headers, payload, trace."""
    return [e.details() for e in DeadLetters(board).get(ident)]


def selected(board: Blackboard, body: Mapping[str, Any], verb: str) -> list[DeadLetter]:
    """The open dead letters an action applies to.

    Raises:
        ConfigError: nothing named (no ids, no filter, no ``all``), or an id not open.
    """
    return DeadLetters(board).named(
        selection(body), everything=body.get("all") is True, verb=verb, all_word="all"
    )


def replay(board: Blackboard, body: Mapping[str, Any]) -> dict[str, Any]:
    """Replay (or, ``dry_run``, list) what ``body`` selects; at most ``rate`` per second.

    Raises:
        ConfigError: see :func:`selected`, or a bad rate.
    """
    entries = selected(board, body, "replay")
    rate = body.get("rate")
    if rate is not None and (not isinstance(rate, int | float) or rate <= 0):
        raise ConfigError("rate must be a positive number")
    report = DeadLetters(board).replay(
        entries, dry_run=bool(body.get("dry_run")), rate=float(rate) if rate else None
    )
    return {"replayed": report.replayed, "skipped": report.skipped, "dry_run": report.dry_run}


def purge(board: Blackboard, body: Mapping[str, Any]) -> dict[str, Any]:
    """Purge (or, ``dry_run``, list) what ``body`` selects.

    Raises:
        ConfigError: see :func:`selected`.
    """
    entries = selected(board, body, "purge")
    if body.get("dry_run"):
        return {"purged": [e.entry_id for e in entries], "dry_run": True}
    return {"purged": DeadLetters(board).purge(entries), "dry_run": False}
