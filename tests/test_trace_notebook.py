"""The trace-analysis notebook, executed headless on traces of the demo."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import nbclient
import nbformat

if TYPE_CHECKING:
    import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "trace_analysis.ipynb"
FIGURES = 5  # Gantt, ECDF, RED, queue vs service, comparison


def test_the_notebook_is_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_the_notebook_runs_headless_and_draws_its_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents.demo import run_demo

    traces = tmp_path / "traces"
    for _ in range(2):  # the runs it compares: the demo twice, as the notebook would run it
        doc = asyncio.run(run_demo(ideas=30, seed=7, traces=traces))
        assert doc["traces"]["spans_written"] == doc["traces"]["spans_ended"] > 0
    monkeypatch.setenv("BLACKBOARD_TRACES", str(traces))  # the kernel inherits it
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == FIGURES
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "complete       True" in text  # the summary: every span ended was written
    assert "end to end" in text  # the comparison's table
    assert "no model calls (chat spans) in run" in text  # the demo's agents call no model
