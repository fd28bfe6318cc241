"""The exception tree drawn in ``blackboard/errors.py`` is the tree of its classes."""

from __future__ import annotations

import inspect
import re

from blackboard import errors

_LINE = re.compile(r"^(?P<branch>[ │├└─]*)(?P<name>\w+)(?:\s.*)?$")
INDENT = 4  # the literal block's indent; each level adds one "├── " / "│   " / "    "


def drawn(doc: str) -> dict[str, str | None]:
    """Class → parent, read from the ``::`` block of ``doc`` (box-drawing tree)."""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    parents: dict[str, str | None] = {}
    path: list[str] = []
    for line in block.splitlines():
        m = _LINE.match(line)
        assert m is not None, f"not a tree line: {line!r}"
        width = len(m["branch"]) - INDENT
        assert width >= 0 and width % 4 == 0, f"misaligned: {line!r}"
        depth = width // 4
        assert depth <= len(path), f"skips a level: {line!r}"
        del path[depth:]
        parents[m["name"]] = path[-1] if path else None
        path.append(m["name"])
    return parents


def real() -> dict[str, str | None]:
    """Class → parent for every exception class defined in ``blackboard.errors``."""
    out: dict[str, str | None] = {}
    for name, cls in inspect.getmembers(errors, inspect.isclass):
        if cls.__module__ != errors.__name__ or not issubclass(cls, errors.BlackboardError):
            continue
        (base,) = cls.__bases__
        out[name] = None if cls is errors.BlackboardError else base.__name__
    return out


def test_the_parser_reads_depth_from_the_branches() -> None:
    doc = "x\n\n::\n\n    A\n    ├── B   b\n    │   └── C\n    └── D\n\nrest"
    assert drawn(doc) == {"A": None, "B": "A", "C": "B", "D": "A"}


def test_the_drawn_tree_matches_the_classes() -> None:
    assert errors.__doc__ is not None
    assert drawn(errors.__doc__) == real()
