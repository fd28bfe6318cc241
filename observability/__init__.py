"""Spans of the processing loop, written per process as Arrow segments, merged into DuckDB for
canned analyses (docs/DESIGN.md §6; docs/ARCHITECTURE.md, Observability).

- :mod:`~observability.tracing` turns tracing on (:func:`~observability.tracing.start_tracing`)
  and makes the spans the runner's tracing hook and the blackboard ask for;
- :mod:`~observability.schema` the span row and the DuckDB tables;
- :mod:`~observability.exporter` the sized queue and the segment writer;
- :mod:`~observability.segments` where runs live, merging and opening them;
- :mod:`~observability.analyses` the canned analyses, :mod:`~observability.report` their text;
- :mod:`~observability.otel` the OpenTelemetry SDK side (provider, OTLP, conversions);
- :mod:`~observability.runs` what a run is; :mod:`~observability.settings` its variables and
  the queue sizes.

The current span (for log lines) lives in the core, :mod:`blackboard.spancontext`, which this
package fills.

Importing this package imports none of DuckDB, Arrow or the SDK: the runner imports the hooks
on every start.
"""
