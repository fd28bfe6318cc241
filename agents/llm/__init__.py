"""LLM-backed agents: model adapters with one normalized result, structured output into the
declared artifact type, usage and cost, 429-aware limits, budgets and record/replay.

``ctx.llm(Review, prompt)`` inside any handler; ``App.llm_agent(...)`` for the common case.
"""

from __future__ import annotations

from agents.llm.adapter import ModelAdapter, StructuredMode
from agents.llm.client import AgentLLM, LLMCall, LLMRuntime, LLMStats, default_runtime
from agents.llm.function_model import FunctionModel
from agents.llm.models import ModelRef, parse_model
from agents.llm.result import LLMRequest, LLMResult, Message, ToolCall, Usage
from agents.llm.settings import LLMSettings

__all__ = [
    "AgentLLM",
    "FunctionModel",
    "LLMCall",
    "LLMRequest",
    "LLMResult",
    "LLMRuntime",
    "LLMSettings",
    "LLMStats",
    "Message",
    "ModelAdapter",
    "ModelRef",
    "StructuredMode",
    "ToolCall",
    "Usage",
    "default_runtime",
    "parse_model",
]
