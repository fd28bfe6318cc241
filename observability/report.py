"""Arrow tables as text for a terminal, and as JSON-ready rows."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa


def json_rows(table: pa.Table) -> list[dict[str, Any]]:
    """The table's rows as dicts (NaN becomes None; orjson writes datetimes as ISO text)."""
    rows: list[dict[str, Any]] = table.to_pylist()
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                row[key] = None
    return rows


def _cell(value: Any, decimals: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.{decimals}f}" if abs(value) < 1e6 else f"{value:.4g}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    text = str(value)
    return text if len(text) <= 48 else text[:47] + "…"


def render(
    table: pa.Table, limit: int | None = 50, decimals: Mapping[str, int] | None = None
) -> str:
    """The table as aligned text columns (numbers right-aligned), at most ``limit`` rows
    followed by a line saying how many more there are. Floats get 3 decimals, or as many as
    ``decimals`` says for their column (e.g. 6 for a cost in USD)."""
    rows = table.to_pylist()
    shown = rows if limit is None else rows[:limit]
    names = table.column_names
    places = [(decimals or {}).get(n, 3) for n in names]
    cells = [[_cell(row[n], d) for n, d in zip(names, places, strict=True)] for row in shown]
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in table.schema]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(list(names)), *(line(r) for r in cells)]
    if len(rows) > len(shown):
        out.append(f"… {len(rows) - len(shown)} more rows (--limit, or --json for all)")
    if not rows:
        out.append("(no rows)")
    return "\n".join(out)


def render_record(table: pa.Table) -> str:
    """A one-row table as ``name: value`` lines (e.g. a run summary)."""
    rows = table.to_pylist()
    if not rows:
        return "(no rows)"
    width = max(len(n) for n in table.column_names)
    return "\n".join(f"{name:<{width}}  {_cell(value)}" for name, value in rows[0].items())
