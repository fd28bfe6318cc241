"""Shared fixtures. Real servers (Kafka, Redis) come from tests/services.py when present."""

from __future__ import annotations

import importlib.util

from blackboard.logs import configure_logging

configure_logging("warning", json=True)

if importlib.util.find_spec("tests.services") is not None:
    pytest_plugins = ["tests.services"]
