"""References to the design contracts point at sections of ``docs/DESIGN.md`` that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_REF = re.compile(r"DESIGN(?:\.md)? (?:§|section )(\d+)")
_SECTION = re.compile(r"^## (\d+)\. ", re.MULTILINE)
_SOURCES = ("blackboard", "agents", "scheduler", "observability", "bench", "compose", "tests")


def _files() -> list[Path]:
    found = [p for d in _SOURCES for p in (ROOT / d).rglob("*.py")]
    return [*found, *(ROOT / "docs").glob("*.md"), ROOT / "README.md", *(ROOT / ".ci").iterdir()]


def test_every_design_reference_names_a_section_of_docs_design_md() -> None:
    sections = set(_SECTION.findall((ROOT / "docs" / "DESIGN.md").read_text()))
    assert sections == {str(n) for n in range(1, 10)}
    refs = {
        f"{path.relative_to(ROOT)}: §{number}"
        for path in _files()
        for number in _REF.findall(path.read_text())
    }
    assert refs, "no references found: the pattern is wrong"
    assert {r for r in refs if r.rsplit("§", 1)[1] not in sections} == set()


def test_nothing_points_outside_the_repository_for_the_design() -> None:
    outside = [
        str(path.relative_to(ROOT))
        for path in _files()
        if path != Path(__file__) and "shared/DESIGN" in path.read_text()
    ]
    assert outside == []
