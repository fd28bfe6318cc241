"""The DuckDB side shared by the analyses: a query as an Arrow table, and a run's presence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import duckdb

from blackboard.errors import TraceError

if TYPE_CHECKING:
    import pyarrow as pa

Connection = duckdb.DuckDBPyConnection


def query(con: Connection, sql: str, params: Sequence[Any]) -> pa.Table:
    """``sql`` with ``params`` as an Arrow table.

    Raises:
        TraceError: the query failed.
    """
    try:
        table: pa.Table = con.sql(sql, params=list(params)).to_arrow_table()
    except duckdb.Error as exc:
        raise TraceError(f"trace query failed: {exc}") from exc
    return table


def check_run(con: Connection, run_id: str) -> None:
    """Raise :class:`TraceError` unless ``run_id`` is among the runs opened."""
    found = con.execute("SELECT count(*) FROM runs WHERE run_id = $1", [run_id]).fetchall()
    if not found[0][0]:
        raise TraceError(f"run {run_id!r} is not in the traces opened")
