"""``blackboard dlq`` and the circuit state in ``blackboard lag``, run as users run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

from tests.test_cli import CLI, run

APP = """
import os
from agents import App, Context
from agents.retry import RetryPolicy
from agents.demo import Idea, Review, registry

app = App("picky", registry=registry)

@app.agent(consumes=Idea, publishes=Review, retry=RetryPolicy(max_attempts=2, backoff_ms=1))
async def novelty(idea: Idea, ctx: Context) -> Review:
    if idea.title == "poison" and not os.environ.get("FIXED"):
        raise ValueError("cannot score a poison idea")
    ctx.log.info("scored", title=idea.title)
    return Review(idea_id=ctx.envelope.id, aspect="novelty", score=5)
"""


def _worker(tmp_path: Path, store: str, *, fixed: bool) -> subprocess.Popen[str]:
    env = {**os.environ, "BLACKBOARD_URL": "", "FIXED": "1" if fixed else ""}
    return subprocess.Popen(
        [*CLI, "worker", "pickyapp:app", "--store", store],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_until(worker: subprocess.Popen[str], text: str) -> str:
    """Read the worker's log until ``text``, then SIGTERM it (it commits and exits 0)."""
    deadline = time.monotonic() + 60
    log = ""
    while text not in log:
        assert time.monotonic() < deadline, log
        line = worker.stderr.readline()  # type: ignore[union-attr]
        assert line, f"worker exited: {worker.poll()}\n{log}"
        log += line
    time.sleep(0.5)  # let the commit that follows go through
    worker.send_signal(signal.SIGTERM)
    _, rest = worker.communicate(timeout=60)
    assert worker.returncode == 0, log + rest
    return log + rest


def test_dlq_list_show_replay_purge_and_circuit_state(tmp_path: Path) -> None:
    (tmp_path / "pickyapp.py").write_text(textwrap.dedent(APP))
    store = f"memory://{tmp_path}/board"
    ideas = '{"title": "fine"}\n{"title": "poison"}\n{"title": "also fine"}\n'
    assert run("publish", "research.Idea", "--store", store, stdin=ideas).returncode == 0
    _run_until(_worker(tmp_path, store, fixed=False), '"retry": false')

    listed = json.loads(run("dlq", "list", "--store", store, "--json").stdout)["dead_letters"]
    assert len(listed) == 1
    [entry] = listed
    assert entry["agent"] == "novelty" and entry["stage"] == "process"
    assert entry["attempt"] == 2 and entry["type"] == "research.Idea"
    assert entry["exception"] == "builtins.ValueError"

    shown = run("dlq", "show", entry["id"], "--store", store)
    assert shown.returncode == 0, shown.stderr
    assert "cannot score a poison idea" in shown.stdout
    assert "Traceback" in shown.stdout and "'title': 'poison'" in shown.stdout
    by_artifact = run("dlq", "show", entry["artifact_id"], "--store", store, "--json")
    [detail] = json.loads(by_artifact.stdout)["dead_letters"]
    assert detail["id"] == entry["id"] and detail["payload"]["title"] == "poison"
    assert detail["headers"]["bb.dlq.stage"] == "process"

    lag = json.loads(run("lag", "--store", store, "--json").stdout)
    assert [(a["agent"], a["breaker"]) for a in lag["agents"]] == [("novelty", "closed")]
    assert "agent novelty slot 0: circuit closed" in run("lag", "--store", store).stdout

    for refused in (["replay"], ["purge", "--all"]):
        out = run("dlq", *refused, "--store", store)
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.strip().startswith("blackboard: error: "), out.stderr
    dry = json.loads(run("dlq", "replay", "--all", "--dry-run", "--store", store, "--json").stdout)
    assert dry == {"replayed": [entry["id"]], "skipped": [], "dry_run": True}
    still = json.loads(run("dlq", "list", "--store", store, "--json").stdout)["dead_letters"]
    assert len(still) == 1  # a dry run changes nothing

    replay = json.loads(run("dlq", "replay", entry["id"], "--store", store, "--json").stdout)
    assert replay["replayed"] == [entry["id"]]
    assert json.loads(run("dlq", "list", "--store", store, "--json").stdout)["dead_letters"] == []
    again = run("dlq", "replay", entry["id"], "--store", store)
    assert again.returncode == 2 and "no open dead letter" in again.stderr

    _run_until(_worker(tmp_path, store, fixed=True), '"title": "poison"')
    reviews = run("tail", "research.Review", "--store", store).stdout.splitlines()
    assert len(reviews) == 3  # the replayed idea was reviewed, once

    everything = json.loads(run("dlq", "list", "--all", "--store", store, "--json").stdout)
    assert [e["disposition"] for e in everything["dead_letters"]] == ["replayed"]
    purge = run("dlq", "purge", "--all", "--yes", "--store", store, "--json")
    assert json.loads(purge.stdout) == {"purged": []}  # nothing open is left to purge
