"""The agent API and the worker process."""

from __future__ import annotations

from agents.agent import AgentSpec, App
from agents.context import Context, KeyedState
from agents.runner import AgentRunner
from agents.settings import RunnerSettings
from agents.worker import Worker, load_app

__all__ = [
    "AgentRunner",
    "AgentSpec",
    "App",
    "Context",
    "KeyedState",
    "RunnerSettings",
    "Worker",
    "load_app",
]
