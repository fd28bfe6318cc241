"""The web dashboard (``blackboard dashboard``): lag with Burrow-style health, topics, dead
letters (browse, replay, purge, with an audit log) and traced runs, served by Starlette with
server-sent events for live updates.

::

    settings.py   DashboardSettings, the key from BLACKBOARD_API_KEY, the start-up check
    auth.py       the API key: required for changes, and for reads off loopback
    health.py     Burrow-style partition health over sampled committed offsets
    sampler.py    samples lag and end offsets every interval; overview, group, topic views
    dlq.py        dead-letter reads and actions (the CLI's semantics) behind the routes
    traces.py     traced runs (merged DuckDB files only) for the runs page
    audit.py      every action appended to a JSON-lines audit log
    events.py     the server-sent event stream
    app.py        routes and the Starlette application
    server.py     uvicorn: serve from the command line, or in a thread (tests, notebooks)
"""

from __future__ import annotations

from blackboard.shell.dashboard.settings import DashboardSettings

__all__ = ["DashboardSettings"]
