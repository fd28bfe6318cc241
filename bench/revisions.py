"""One benchmark on two revisions of the code, side by side, alternating, on one server.

``python -m bench.revisions --base REV [--store kafka|redis] [--records N] [--pairs P]
[--bootstrap HOST:PORT] [--redis-url URL] [--json]`` checks ``REV`` out into a temporary git
worktree, starts one broker (or redis-server) unless given one, and runs
``bench.kafka_pipeline`` P times from each tree in turn (base, this tree, this tree, base, ...),
each run a fresh process importing its own tree's code. Each run measures ours against the
plain loop on the same server at the same moment, so the figure compared is ours / plain
(``ratio_to_plain``): the machine's noise moves both variants alike; and the CPU seconds each
run's process used (both variants and the warm-up: the plain loop is the same code in both
revisions, so a difference is ours). It prints each run and the medians per revision;
``--json`` prints one JSON document instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def progress(line: str) -> None:
    print(f"revisions: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """``rev`` checked out in a temporary worktree (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="bench-base-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(path), rev], cwd=ROOT, check=True
        )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False
            )


@contextlib.contextmanager
def server(store: str, bootstrap: str | None, redis_url: str | None) -> Iterator[list[str]]:
    """The ``bench.kafka_pipeline`` arguments naming one server for every run."""
    if store == "kafka":
        if bootstrap:
            yield ["--bootstrap", bootstrap]
            return
        from compose.kafka_local import KafkaLocal

        broker = KafkaLocal(die_with_parent=True)
        broker.start()
        try:
            yield ["--bootstrap", broker.bootstrap]
        finally:
            broker.stop()
            broker.cleanup()
        return
    if redis_url:
        yield ["--store", "redis", "--redis-url", redis_url]
        return
    from compose.redis_local import RedisLocal

    local = RedisLocal(die_with_parent=True)
    local.start()
    try:
        yield ["--store", "redis", "--redis-url", local.url]
    finally:
        local.stop()
        local.cleanup()


def _children_cpu_s() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def run_once(tree: Path, args: list[str]) -> dict[str, Any]:
    """One ``bench.kafka_pipeline --rounds 1 --json`` run with ``tree``'s code; its document,
    with the CPU seconds the run's process used (``cpu_s``: both variants and the warm-up,
    every thread; the server is another process)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = _children_cpu_s()
    out = subprocess.run(
        [sys.executable, "-m", "bench.kafka_pipeline", *args, "--rounds", "1", "--json"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"revisions: a run in {tree} failed:\n{out.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(out.stdout)
    doc["cpu_s"] = round(_children_cpu_s() - before, 3)
    return doc


def ours(doc: dict[str, Any]) -> dict[str, Any]:
    """The ``ours`` variant of a run's document."""
    found: dict[str, Any] = next(v for v in doc["variants"] if v["variant"].startswith("ours"))
    return found


def main() -> None:
    """Parse the arguments, run the pairs and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the revision to compare with (git rev)")
    parser.add_argument("--store", choices=("kafka", "redis"), default="kafka")
    parser.add_argument("--records", type=int, default=20_000, help="inputs per run")
    parser.add_argument("--pairs", type=int, default=3, help="runs per revision")
    parser.add_argument("--bootstrap", help="an existing Kafka broker")
    parser.add_argument("--redis-url", help="an existing Redis")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    if args.records < 1 or args.pairs < 1:
        parser.error("--records and --pairs must be at least 1")
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
    with worktree(args.base) as base, server(args.store, args.bootstrap, args.redis_url) as srv:
        common = [*srv, "--records", str(args.records)]
        for i in range(args.pairs):
            order = (("base", base), ("head", ROOT))
            for name, tree in order if i % 2 == 0 else reversed(order):
                doc = run_once(tree, common)
                found = ours(doc) | {"cpu_s": doc["cpu_s"]}
                runs[name].append(found)
                progress(
                    f"{name} run {len(runs[name])}: {found['records_per_s']:.0f} rec/s, "
                    f"{found['ratio_to_plain']:.3f}x plain, process CPU {doc['cpu_s']:.1f}s"
                )
    summary = {
        name: {
            "median_ratio_to_plain": statistics.median(r["ratio_to_plain"] for r in found),
            "median_records_per_s": statistics.median(r["records_per_s"] for r in found),
            "ratios": [r["ratio_to_plain"] for r in found],
            "median_cpu_s": statistics.median(r["cpu_s"] for r in found),
            "cpu_s": [r["cpu_s"] for r in found],
        }
        for name, found in runs.items()
    }
    doc = {"store": args.store, "base": args.base, "records": args.records, "summary": summary}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    for name, s in summary.items():
        print(
            f"{name:5} median {s['median_ratio_to_plain']:.3f}x plain, "
            f"{s['median_records_per_s']:.0f} rec/s, process CPU {s['median_cpu_s']:.1f}s  "
            f"(ratios: {s['ratios']}; CPU: {s['cpu_s']})"
        )


if __name__ == "__main__":
    main()
