"""An API key never reaches a log line, a span, a trace file, a cassette, a dead letter or an
error message, even when the provider echoes it back in its error. The scenario runs in a
process of its own, so everything it logged to stderr is read back whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
from pydantic import BaseModel

from agents.agent import App
from agents.context import Context
from agents.llm import LLMSettings
from agents.retry import RetryPolicy
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.shell.testing import TestBoard
from observability import segments, tracing
from observability.runs import RunInfo
from tests.llm.faultserver import FaultServer, Reply, openai_completion, openai_error

KEY = "sk-test-VERYSECRET-0123456789"
ROOT = Path(__file__).resolve().parents[2]
reg = TypeRegistry()


@artifact("sec.Ask", registry=reg)
class Ask(BaseModel):
    n: int


@artifact("sec.Answer", registry=reg)
class Answer(BaseModel):
    n: int


async def scenario(out: Path) -> None:
    """Two records against a server that echoes the key in every error: one dies on a 401,
    one on three 500s. Writes what the runtime kept (dead letters, the run id) under ``out``."""
    with FaultServer() as server:
        model = f"openai:m?base_url={server.url}/v1"
        server.queue(
            Reply(401, openai_error(f"Incorrect API key provided: {KEY}.", code="invalid_api_key")),
            Reply(500, openai_error(f"upstream said: Authorization: Bearer {KEY}")),
            Reply(500, openai_error(f"still failing for {KEY}")),
            Reply(500, openai_error(f"and again {KEY}")),
            Reply(200, openai_completion('{"n": 1}')),
        )
        app = App(registry=reg)
        retry = RetryPolicy(max_attempts=3, backoff_ms=1, max_backoff_ms=2, jitter="none")

        @app.agent(consumes=Ask, publishes=Answer, model=model, retry=retry)
        async def asker(ask: Ask, ctx: Context) -> Answer:
            return await ctx.llm(Answer, f"n={ask.n}", temperature=None)

        trace = tracing.start_tracing(out / "traces", RunInfo.create(scenario="secrets"))
        try:
            settings = LLMSettings(cassette=out / "c.jsonl", cassette_mode="record")
            async with TestBoard(app, llm=settings, partitions=1) as tb:
                for i in range(2):
                    tb.publish(Ask(n=i), partition_key="k")
                await tb.run_until_idle()
                letters = [[(k, v.hex()) for k, v in r.headers] for r in tb.dead_letters(Ask)]
        finally:
            trace.stop()
        sent = [r.headers.get("authorization") for r in server.requests]
    (out / "kept.json").write_bytes(
        orjson.dumps({"letters": letters, "run": trace.run.run_id, "sent": sent})
    )


def test_an_echoed_key_is_nowhere(tmp_path: Path) -> None:
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
    code = (
        "import asyncio, pathlib\n"
        "from tests.llm.test_secrets import scenario\n"
        f"asyncio.run(scenario(pathlib.Path({str(tmp_path)!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    kept = orjson.loads((tmp_path / "kept.json").read_bytes())
    # Every request carried the key to the server (it is the credential) ...
    assert kept["sent"] == [f"Bearer {KEY}"] * 4
    # ... and nothing the runtime wrote or said has it.
    assert "handler failed" in done.stderr and KEY not in done.stderr + done.stdout
    assert len(kept["letters"]) == 2
    for headers in kept["letters"]:
        for name, value in headers:
            assert KEY.encode() not in bytes.fromhex(value), name
    cassette = (tmp_path / "c.jsonl").read_text()
    assert cassette.count("\n") == 4 and KEY not in cassette
    for path in (tmp_path / "traces").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    con = segments.open_runs(tmp_path / "traces", [kept["run"]])
    rows = con.sql("SELECT * FROM spans").to_arrow_table().to_pylist()
    # one chat span per attempt: the 401 once, the 500s three times
    assert sum(r["operation"] == "chat" and r["status"] == "ERROR" for r in rows) == 4
    assert KEY not in repr(rows)
