"""The README's table of variables is generated from the settings classes and kept current."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING

from blackboard.shell.cli import envdocs

if TYPE_CHECKING:
    import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: Every variable the project has documented; none may disappear or change its name.
KNOWN = {
    "BLACKBOARD_URL",
    "BLACKBOARD_PREFIX",
    "BLACKBOARD_PARTITIONS",
    "BLACKBOARD_BACKPRESSURE",
    "BLACKBOARD_BACKPRESSURE_TARGET_WAIT_S",
    "BLACKBOARD_BACKPRESSURE_MAX_RATE",
    "BLACKBOARD_BACKPRESSURE_MIN_RATE",
    "BLACKBOARD_BACKPRESSURE_INCREASE",
    "BLACKBOARD_BACKPRESSURE_DECREASE",
    "BLACKBOARD_BACKPRESSURE_SAMPLE_INTERVAL_S",
    "BLACKBOARD_BACKPRESSURE_BURST_S",
    "BLACKBOARD_BACKPRESSURE_IGNORE_AGENTS",
    "BLACKBOARD_BATCH",
    "BLACKBOARD_RATE_LIMIT_URL",
    "BLACKBOARD_LLM_MODEL",
    "BLACKBOARD_LLM_CASSETTE",
    "BLACKBOARD_LLM_CASSETTE_MODE",
    "BLACKBOARD_LLM_MAX_REASKS",
    "BLACKBOARD_LLM_MAX_WAIT_S",
    "BLACKBOARD_LLM_TIMEOUT_S",
    "BLACKBOARD_TRACES",
    "BLACKBOARD_RUN_ID",
    "BLACKBOARD_GIT_SHA",
    "BLACKBOARD_TRACES_QUEUE",
    "BLACKBOARD_TRACES_BATCH",
    "BLACKBOARD_TRACES_FLUSH_S",
    "BLACKBOARD_API_KEY",
    "BLACKBOARD_LOG_LEVEL",
}


def test_the_readme_table_is_the_generated_one() -> None:
    text = README.read_text()
    fix = "python -m blackboard.shell.cli.envdocs --write README.md"
    assert envdocs.replaced(text, envdocs.render()) == text, f"README's table is stale: {fix}"


def test_every_variable_is_declared_once_and_none_was_lost() -> None:
    names = [row[0].strip("`") for row in envdocs.rows()]
    assert len(names) == len(set(names))
    assert set(names) == KNOWN


def _env_settings_classes() -> set[str]:
    """Names of the classes deriving from EnvSettings in the source packages."""
    found = set()
    for package in ("blackboard", "agents", "scheduler", "observability", "bench"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and any(
                    ast.unparse(base).endswith("EnvSettings") for base in node.bases
                ):
                    found.add(node.name)
    return found


def test_the_table_lists_every_settings_class() -> None:
    assert {cls.__name__ for cls in envdocs.SETTINGS} == _env_settings_classes() - {"EnvSettings"}


def test_check_fails_on_a_stale_copy_and_write_brings_it_up_to_date(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    text = README.read_text()
    stale.write_text(text.replace("`BLACKBOARD_PREFIX`", "`BLACKBOARD_OLD_PREFIX`", 1))
    assert envdocs.main(["--check", str(stale)]) == 1
    assert envdocs.main(["--write", str(stale)]) == 0
    assert stale.read_text() == text
    assert envdocs.main(["--check", str(stale)]) == 0
    (tmp_path / "plain.md").write_text("# no markers\n")
    assert envdocs.main(["--check", str(tmp_path / "plain.md")]) == 2


def test_the_table_prints_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert envdocs.main([]) == 0
    out = capsys.readouterr().out
    assert out == envdocs.render()
    assert "| `BLACKBOARD_LOG_LEVEL` | `debug`, `info`, `warning`, `error` | `info` |" in out
