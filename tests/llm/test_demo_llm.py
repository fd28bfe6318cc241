"""``blackboard demo --llm local``: the research demo with LLM reviewers and chair on the real
local model; ``blackboard demo`` alone stays instant and loads no model library."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson


def test_the_llm_demo_reports_tokens_re_asks_and_dead_letters() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "blackboard.shell.cli.main", "demo", "--llm", "local", "--ideas",
         "2", "--json"],
        capture_output=True, timeout=600, check=True,
    )  # fmt: skip
    summary = orjson.loads(done.stdout)  # stdout is exactly one JSON document
    llm = summary["llm"]
    assert llm["model"] == "local:smollm2" and summary["artifacts"]["research.Idea"] == 2
    verdicts = summary["artifacts"].get("research.Verdict", 0)
    dead = summary["dead_letters"]
    # Every idea ends: a verdict, or dead letters (stage llm_output) that stopped it.
    assert verdicts == 2 or (set(dead) == {"llm_output"} and llm["output_failures"] >= 1)
    assert (llm["output_failures"] == 0) == (not dead)
    # Three reviewer calls per idea, a chair call per complete set; re-asks are requests.
    assert 6 + verdicts <= llm["calls"] <= 8
    assert llm["requests"] == llm["calls"] + llm["reasks"]
    assert llm["input_tokens"] > 0 and llm["output_tokens"] > 0 and llm["cost_usd"] == 0.0


def test_the_plain_demo_loads_no_model_library() -> None:
    code = (
        "import sys, asyncio\n"
        "from agents.demo import run_demo\n"
        "s = asyncio.run(run_demo(ideas=3))\n"
        "assert s['artifacts']['research.Verdict'] == 3 and 'llm' not in s\n"
        "heavy = [m for m in ('openai', 'anthropic', 'llama_cpp', 'genai_prices') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True)


def test_the_demo_records_to_a_cassette_and_replays_it_from_the_environment(
    tmp_path: Path,
) -> None:
    cassette = tmp_path / "demo.jsonl"

    def demo(mode: str) -> tuple[dict[str, object], float]:
        env = {
            **os.environ,
            "BLACKBOARD_LLM_CASSETTE": str(cassette),
            "BLACKBOARD_LLM_CASSETTE_MODE": mode,
        }
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "blackboard.shell.cli.main", "demo", "--llm", "local",
             "--ideas", "2", "--json"],
            capture_output=True, timeout=600, check=True, env=env,
        )  # fmt: skip
        return orjson.loads(done.stdout), time.monotonic() - started

    recorded, _ = demo("record")
    entries = cassette.read_bytes().splitlines()
    assert len(entries) == recorded["llm"]["requests"]  # type: ignore[index]
    replayed, _ = demo("replay")
    for key in ("artifacts", "accepted", "dead_letters", "llm"):
        assert replayed[key] == recorded[key], key
    cassette.write_bytes(b"\n".join(entries[:-1]) + b"\n")  # one answer missing now
    broken, _ = demo("replay")  # fails closed: the call with no answer is dead-lettered
    assert broken["dead_letters"].get("process", 0) >= 1  # type: ignore[attr-defined]
