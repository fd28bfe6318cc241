"""The subcommands of ``blackboard``; each takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import signal
import sys
import time
from typing import Any

import orjson

from blackboard.artifacts import TypeRegistry
from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.errors import ArtifactError, ConfigError, DecodeError
from blackboard.records import Record
from blackboard.shell.cli.dlq_commands import cmd_dlq
from blackboard.shell.cli.main import print_json
from blackboard.shell.cli.trace_commands import cmd_traces, start_command_tracing, tracing_dir
from blackboard.shell.experiment import cmd_experiment
from blackboard.wire import decode_envelope

PUBLISH_CHUNK = 100  # artifacts per publish call of `blackboard publish`


def _registry(app_ref: str | None) -> TypeRegistry:
    if app_ref:
        from agents.worker import load_app

        return load_app(app_ref).registry
    from agents import demo

    return demo.registry


def _board(args: argparse.Namespace, registry: TypeRegistry | None = None) -> Blackboard:
    settings = BlackboardSettings.from_env(
        url=args.store, prefix=args.prefix, partitions=args.partitions
    )
    return Blackboard(settings.url, registry=registry, settings=settings)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the research workflow and print its figures."""
    from agents.demo import run_demo

    ideas = args.ideas if args.ideas is not None else (3 if args.llm else 50)
    if ideas < 1:
        raise ConfigError(f"--ideas must be at least 1, got {ideas}")
    if args.llm:
        from agents.llm.models import parse_model

        parse_model("local:smollm2" if args.llm == "local" else args.llm)  # one line if bad
    summary = asyncio.run(
        run_demo(
            ideas=ideas,
            seed=args.seed,
            latency_ms=args.latency_ms,
            url=args.store,
            traces=tracing_dir(args.traces),
            run_id=args.run_id,
            llm=args.llm,
        )
    )
    if args.json:
        print_json(summary)
        return 0
    lat = summary["latency_ms"]
    lines = [
        f"research demo on {summary['store']} (seed {summary['seed']})",
        "artifacts:",
        *(f"  {name:<20} {count:>6}" for name, count in summary["artifacts"].items()),
        f"accepted ideas:        {summary['accepted']} of {summary['ideas']}",
        f"makespan:              {summary['makespan_ms']:.1f} ms",
        f"end-to-end latency:    p50 {lat['p50']:.1f} ms  p95 {lat['p95']:.1f} ms"
        f"  p99 {lat['p99']:.1f} ms",
    ]
    if "llm" in summary:
        llm = summary["llm"]
        lines.append(
            f"model calls:           {llm['calls']} to {llm['model']}, {llm['input_tokens']} in "
            f"+ {llm['output_tokens']} out tokens, ${llm['cost_usd']:.6f}, {llm['reasks']} "
            f"re-asks, dead letters {summary['dead_letters'] or 'none'}"
        )
    if "traces" in summary:
        tr = summary["traces"]
        lines.append(
            f"traces:                run {tr['run_id']}, {tr['spans_written']} of "
            f"{tr['spans_ended']} spans written (blackboard traces summary --traces {tr['dir']})"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_types(args: argparse.Namespace) -> int:
    """List the registered artifact types."""
    types = _registry(args.app).types()
    if args.json:
        print_json(
            {
                "types": [
                    {"name": t.name, "version": t.version, "schema": t.json_schema()} for t in types
                ]
            }
        )
        return 0
    for t in types:
        fields = ", ".join(t.model.model_fields)
        sys.stdout.write(
            f"{t.name} v{t.version}  ({t.model.__module__}.{t.model.__qualname__}: {fields})\n"
        )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run agents until SIGTERM/SIGINT; exit 0 after a clean stop."""
    from agents.settings import RunnerSettings
    from agents.worker import Worker, load_app
    from scheduler.batching import BatchSettings

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 <pid>: dump stacks
    batch = BatchSettings.from_env(batch=args.batch)  # a malformed override: before connecting
    app = load_app(args.app_ref)
    board = _board(args, app.registry)
    agents = [a.strip() for a in args.agents.split(",") if a.strip()] if args.agents else None
    config = {
        "agents": agents,
        "slot": args.slot,
        "grace_s": args.grace,
        "batch": [o.text for o in batch.batch],
    }
    tracing = start_command_tracing(args, scenario=app.name, store=board.store.url, config=config)
    try:
        worker = Worker(
            app,
            board,
            RunnerSettings(shutdown_grace_s=args.grace),
            agents=agents,
            slot=args.slot,
            batch=batch,
        )
        asyncio.run(worker.run(handle_signals=True))
    finally:
        board.close()
        if tracing is not None:
            tracing.stop()
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Validate and publish artifacts; print their envelopes."""
    registry = _registry(args.app)
    art_type = registry.get(args.type_name)
    if args.data and args.data != "-":
        items = [args.data]
    else:
        items = [line for line in sys.stdin.read().splitlines() if line.strip()]
    payloads = []
    for n, raw in enumerate(items, 1):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ArtifactError(f"item {n} is not JSON: {exc}") from None
        payloads.append(art_type.validate_payload(data))
    docs = []
    with _board(args, registry) as board:
        # In chunks, so that backpressure (if on) paces a long input; lines go out as published.
        for start in range(0, len(payloads), PUBLISH_CHUNK):
            envelopes = board.publish_many(
                payloads[start : start + PUBLISH_CHUNK],
                correlation_id=args.correlation_id,
                partition_key=args.key,
                tenant=args.tenant,
            )
            chunk = [_envelope_doc(env) for env in envelopes]
            docs.extend(chunk)
            if not args.json:
                for doc in chunk:
                    sys.stdout.write(orjson.dumps(doc).decode() + "\n")
                sys.stdout.flush()
    if args.json:
        print_json({"published": docs})
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Print a type's artifacts as JSON lines (optionally following new ones)."""
    with _board(args) as board:
        topic = board.topics.for_type(args.type_name)
        parts = board.store.topic_partitions(topic)
        if parts is None:
            raise ConfigError(
                f"no artifacts of type {args.type_name!r} yet (topic {topic} does not exist)"
            )
        ends = board.store.end_offsets([topic])
        positions = {
            tp: max(0, end - args.limit) if args.limit is not None else 0
            for tp, end in ends.items()
        }
        while True:
            printed = 0
            for tp in sorted(positions):
                for record in board.store.read(tp, positions[tp], 1000):
                    sys.stdout.write(orjson.dumps(record_doc(record)).decode() + "\n")
                    positions[tp] = record.offset + 1
                    printed += 1
            sys.stdout.flush()
            if not args.follow:
                return 0
            if not printed:
                time.sleep(0.2)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the web dashboard until Ctrl-C (``blackboard/shell/dashboard``)."""
    from blackboard.shell.dashboard.cli import run_dashboard

    return run_dashboard(args)


def cmd_lag(args: argparse.Namespace) -> int:
    """Print per-group lag, health and desired workers (``blackboard/shell/cli/lag_command.py``)."""
    from blackboard.shell.cli import lag_command

    with _board(args) as board:
        return lag_command.cmd_lag(args, board)


def _envelope_doc(env: Any) -> dict[str, Any]:
    return {
        "id": env.id,
        "type": env.type,
        "schema_version": env.schema_version,
        "correlation_id": env.correlation_id,
        "causation_ids": list(env.causation_ids),
        "partition_key": env.partition_key,
        "tenant": env.tenant,
        "produced_by": env.produced_by,
        "created_at": env.created_at.isoformat(),
        "traceparent": env.traceparent,
    }


def record_doc(record: Record) -> dict[str, Any]:
    """A record as a JSON-ready dict: position, envelope and payload (raw when not JSON)."""
    doc: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
    }
    try:
        doc.update(_envelope_doc(decode_envelope(record)))
    except DecodeError as exc:
        doc["envelope_error"] = str(exc)
    try:
        doc["payload"] = orjson.loads(record.value or b"null")
    except orjson.JSONDecodeError:
        doc["payload_raw"] = (record.value or b"").decode(errors="replace")
    return doc


__all__ = [
    "cmd_demo",
    "cmd_dlq",
    "cmd_experiment",
    "cmd_lag",
    "cmd_publish",
    "cmd_tail",
    "cmd_traces",
    "cmd_types",
    "cmd_worker",
]
