"""Imports go one way (issue 15): each layer imports only itself and the layers below it.

    blackboard (core) < scheduler < observability < agents < blackboard.shell

The core is ``blackboard`` without ``blackboard.shell`` (artifacts, wire, records, store, stores,
errors, ``Blackboard``); the shell is the application around the runtime (CLI, dashboard,
``TestBoard``, the simulator and the experiment runner). Every import counts, including those
inside functions and under ``TYPE_CHECKING``: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("blackboard", "scheduler", "observability", "agents", "blackboard.shell")


def layer_of(module: str) -> int | None:
    """The layer of a dotted module name (None: outside the runtime, e.g. a library)."""
    found = None
    for rank, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            found = rank  # the longest matching prefix wins (blackboard.shell over blackboard)
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file (a relative one as ``.name``: the project
    imports absolutely, so the layer of each import is plain to read)."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


def upward_imports() -> list[str]:
    bad = []
    for top in ("blackboard", "scheduler", "observability", "agents"):
        for path in sorted((ROOT / top).rglob("*.py")):
            here = layer_of(module_name(path))
            assert here is not None
            for line, target in imports_of(path):
                if target.startswith("."):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {target} relatively")
                    continue
                there = layer_of(target)
                if there is not None and there > here:
                    bad.append(
                        f"{path.relative_to(ROOT)}:{line} ({LAYERS[here]}) imports {target} "
                        f"({LAYERS[there]})"
                    )
    return bad


def test_no_module_imports_a_layer_above_its_own() -> None:
    bad = upward_imports()
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an import of agents from a core module is caught, inside a function
    and under TYPE_CHECKING too."""
    core = tmp_path / "mod.py"
    core.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from agents.runner import AgentRunner\n"
        "def f():\n    import scheduler.throttle\n"
    )
    assert [t for _, t in imports_of(core)] == ["typing", "agents.runner", "scheduler.throttle"]
    assert layer_of("agents.runner") == 3 and layer_of("blackboard.shell.cli") == 4
    assert layer_of("blackboard.records") == 0 and layer_of("pydantic") is None
