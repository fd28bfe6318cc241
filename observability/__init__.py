"""Spans, the DuckDB exporter and canned analyses (see the observability issue)."""
