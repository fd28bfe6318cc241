"""``blackboard lag``: lag per group partition, and over a window of samples Burrow's health per
partition and group, KEDA's desired workers, drain rates and expected waits per topic, and each
agent's circuit and backpressure state.

The arithmetic is :mod:`scheduler.backpressure`'s, the same the dashboard uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from blackboard.blackboard import Blackboard
from blackboard.errors import ConfigError
from blackboard.shell.cli.main import print_json
from blackboard.status import AgentStatus, read_status
from blackboard.store import LagRow
from scheduler.backpressure import GroupHealth, LagWindows

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from ``500ms``, ``10s``, ``2m``, ``1h`` or a plain number of seconds.

    Raises:
        ConfigError: not a duration.
    """
    found = _DURATION.match(text)
    if found is None:
        raise ConfigError(f"--window must be a duration such as 10s or 500ms, got {text!r}")
    return float(found.group(1)) * _UNIT_S[found.group(2) or "s"]


def add_lag_arguments(p: argparse.ArgumentParser) -> None:
    """The ``lag`` subcommand's own options."""
    p.add_argument("--group", action="append", help="only these groups (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--window",
        default="0s",
        help="time the samples span, e.g. 10s (health needs at least two samples)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="samples taken over the window (default 1, or 5 when --window is given)",
    )
    p.add_argument(
        "--lag-threshold",
        type=int,
        default=1000,
        help="lag one worker absorbs: desired workers = ceil(lag / threshold), <= partitions",
    )


def sample_lag(
    board: Blackboard,
    groups: Sequence[str] | None,
    samples: int,
    window_s: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[LagWindows, list[LagRow], bool]:
    """Read lag ``samples`` times spread over ``window_s``; the windows, the last rows and
    whether Ctrl-C cut the sampling short (the samples taken so far are kept)."""
    windows = LagWindows(samples)
    interval = window_s / (samples - 1) if samples > 1 else 0.0
    rows: list[LagRow] = []
    try:
        for n in range(samples):
            if n:
                sleep(interval)
            rows = board.lag(groups or None)  # default: the blackboard's own groups
            windows.add(rows, clock())
            if progress is not None:
                progress(n + 1, samples)
    except KeyboardInterrupt:
        return windows, rows, True
    return windows, rows, False


def _number(x: float | None) -> float | None:
    return None if x is None or math.isinf(x) else round(x, 3)


def group_doc(h: GroupHealth) -> dict[str, Any]:
    """One group's health as JSON-ready data."""
    return {
        "group": h.group,
        "status": h.status,
        "total_lag": h.total_lag,
        "partitions": h.partitions,
        "desired_workers": h.desired_workers,
        "lag_threshold": h.lag_threshold,
        "drain_per_s": round(h.throughput, 3),
        "samples": h.samples,
        "rows": [dataclasses.asdict(r) for r in h.rows],
        "topics": [
            {
                "topic": t.topic,
                "lag": t.lag,
                "drain_per_s": _number(t.drain_per_s),
                "expected_wait_s": _number(t.expected_wait_s),
                "stalled": t.expected_wait_s is not None and math.isinf(t.expected_wait_s),
            }
            for t in h.topics
        ],
    }


def topic_waits(healths: Sequence[GroupHealth]) -> list[dict[str, Any]]:
    """Per topic, the longest expected wait over its consumer groups (Little's law: what
    a publisher's throttle compares with its target)."""
    out: dict[str, dict[str, Any]] = {}
    for h in healths:
        for t in h.topics:
            doc = out.setdefault(t.topic, {"topic": t.topic, "expected_wait_s": None})
            known = doc.get("_wait")
            if t.expected_wait_s is not None and (known is None or t.expected_wait_s > known):
                doc.update(
                    _wait=t.expected_wait_s,
                    expected_wait_s=_number(t.expected_wait_s),
                    stalled=math.isinf(t.expected_wait_s),
                    group=h.group,
                    lag=t.lag,
                    drain_per_s=_number(t.drain_per_s),
                )
    for doc in out.values():
        doc.pop("_wait", None)
        doc.setdefault("stalled", False)
    return [out[t] for t in sorted(out)]


def lag_document(
    rows: Sequence[LagRow],
    windows: LagWindows,
    statuses: Sequence[AgentStatus],
    lag_threshold: int,
    window_s: float,
) -> dict[str, Any]:
    """Everything ``blackboard lag --json`` prints, as one document."""
    healths = [windows.health(g, lag_threshold) for g in windows.groups()]
    return {
        "window_s": window_s,
        "samples": min(windows.samples, windows.size),
        "lag_threshold": lag_threshold,
        "groups": [group_doc(h) for h in healths],
        "topics": topic_waits(healths),
        "agents": [dataclasses.asdict(s) for s in statuses],
        "lag": [
            {
                "group": r.group,
                "topic": r.topic,
                "partition": r.partition,
                "end_offset": r.end_offset,
                "committed_offset": r.committed_offset,
                "lag": r.lag,
                **lag_extras(r),
            }
            for r in rows
        ],
    }


def lag_extras(row: LagRow) -> dict[str, Any]:
    """Figures a store adds to its lag rows (a LagRow subclass), e.g. Redis' delivered and
    pending counts."""
    base = {f.name for f in dataclasses.fields(LagRow)}
    return {f.name: getattr(row, f.name) for f in dataclasses.fields(row) if f.name not in base}


def _seconds(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}s"


def render(doc: dict[str, Any]) -> str:
    """The human-readable form of :func:`lag_document`."""
    lines = [
        f"{'GROUP':<24} {'TOPIC':<32} {'PART':>4} {'END':>10} {'COMMITTED':>10} {'LAG':>8}"
        f" {'STATUS':<6}"
    ]
    for g in doc["groups"]:
        for r in g["rows"]:
            committed = "-" if r["committed_offset"] is None else str(r["committed_offset"])
            lines.append(
                f"{g['group']:<24} {r['topic']:<32} {r['partition']:>4} {r['end_offset']:>10}"
                f" {committed:>10} {r['lag']:>8} {r['status']:<6}"
            )
    samples = doc["samples"]
    note = "" if samples >= 2 else " (one sample: health needs --window)"
    for g in doc["groups"]:
        lines.append(
            f"group {g['group']}: {g['status']}{note}, lag {g['total_lag']}, desired workers"
            f" {g['desired_workers']} (lag threshold {g['lag_threshold']},"
            f" {g['partitions']} partitions), drain {g['drain_per_s']:g}/s"
        )
    for t in doc["topics"]:
        stalled = t.get("stalled")
        wait = "never (nothing drains)" if stalled else _seconds(t["expected_wait_s"])
        slowest = f" (slowest group {t['group']})" if "group" in t else ""
        lines.append(f"topic {t['topic']}: expected wait {wait}{slowest}")
    for st in doc["agents"]:
        parts = []
        if st["breaker"]:
            detail = ""
            if st["breaker"] != "closed":
                detail = (
                    f" ({st['consecutive_failures']} failures in a row,"
                    f" cool-down {st['cooldown_s']:g}s)"
                )
            parts.append(f"circuit {st['breaker']}{detail}")
        for topic, f in sorted(st.get("throttle", {}).items()):
            parts.append(
                f"{topic} {f['bb.throttle.state']} at {f['bb.throttle.rate']:g}/s"
                f" (lag {f['bb.throttle.lag']}, expected wait"
                f" {_seconds(f['bb.throttle.expected_wait_s'])})"
            )
        lines.append(f"agent {st['agent']} slot {st['slot']}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def cmd_lag(args: argparse.Namespace, board: Blackboard) -> int:
    """Print lag, health and desired workers; over ``--window`` with ``--samples`` samples
    (progress on stderr; Ctrl-C prints what was sampled and exits 130)."""
    window_s = parse_duration(args.window)
    samples = args.samples if args.samples is not None else (5 if window_s > 0 else 1)
    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    if samples > 1 and window_s <= 0:
        raise ConfigError("--samples above 1 needs a --window to spread them over, e.g. 10s")
    if args.lag_threshold < 1:
        raise ConfigError(f"--lag-threshold must be at least 1, got {args.lag_threshold}")

    def progress(n: int, total: int) -> None:
        if total > 1:
            sys.stderr.write(f"blackboard lag: sample {n}/{total}\n")
            sys.stderr.flush()

    windows, rows, interrupted = sample_lag(board, args.group, samples, window_s, progress=progress)
    statuses = [s for s in read_status(board) if not args.group or s.group in set(args.group)]
    doc = lag_document(rows, windows, statuses, args.lag_threshold, window_s)
    if interrupted:
        sys.stderr.write(f"blackboard lag: interrupted after {doc['samples']} samples\n")
    if args.json:
        print_json(doc)
    else:
        sys.stdout.write(render(doc))
    return 130 if interrupted else 0
