"""The broker-free benchmarks still run end to end (their figures are printed, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_runner_cpu_prints_one_json_document_per_run() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.runner_cpu", "--inputs", "300", "--repeats", "2", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    doc = json.loads(out.stdout)
    assert doc["inputs"] == 300 and len(doc["us_per_input"]) == 2
    assert 0 < doc["best_us"] <= doc["median_us"]
    assert "repeat 2/2" in out.stderr


def test_runner_cpu_refuses_a_bad_option_in_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.runner_cpu", "--inputs", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "must be >= 1" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_llm_benchmark_runs_end_to_end() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.llm", "--inputs", "50", "--latency-s", "0.2",
         "--seconds", "8", "--measure-s", "2", "--max-rate", "50", "--json"],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    doc = json.loads(out.stdout)
    assert doc["replay"]["identical"] is True and doc["replay"]["model_calls_in_replay"] == 0
    assert doc["overhead"]["inputs"] == 50 and doc["convergence"]["answered"] > 0
