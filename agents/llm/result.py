"""What every model adapter takes and gives back, the same for every provider: a
:class:`LLMRequest` in, an :class:`LLMResult` out (or an :class:`~blackboard.errors.LLMError`
with a normalized ``kind``), so strategies (re-asks, rate limits, budgets, cassettes) never
look at which provider answered."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

#: Why a model stopped: ``stop`` (its own end), ``length`` (the token limit: the answer is cut
#: off), ``tool_calls``, ``content_filter``, or ``other``.
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "other"]

#: How a call failed, whichever provider answered (see :class:`~blackboard.errors.LLMError`).
ErrorKind = Literal[
    "rate_limited",
    "quota_exhausted",
    "overloaded",
    "context_window",
    "invalid_request",
    "auth",
    "timeout",
    "server",
]

#: Kinds no retry can fix: the record is dead-lettered at once.
REQUEST_FAULTS: frozenset[str] = frozenset({"invalid_request", "auth", "context_window"})


class ToolCall(BaseModel):
    """A tool the model asked to call, with its arguments (a JSON object)."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


class Usage(BaseModel):
    """Tokens of one or more calls.

    ``input_tokens`` counts every input token, cached or not (Anthropic reports cache reads
    and writes apart from its ``input_tokens``; the adapter adds them in), so prices apply
    the cache-read and cache-write rates to those parts only.
    """

    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    """Part of ``output_tokens`` (the model's hidden reasoning), where reported."""

    @property
    def total(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )


class LLMRequest(BaseModel):
    """A model request as every adapter takes it.

    Attributes:
        model: the model's name at its provider (``gpt-4o-mini``).
        messages: the conversation, system message first if any.
        output_schema: the JSON schema the answer must follow (None: free text).
        output_name: a name for that schema (the provider's ``json_schema.name``, the forced
            tool's name).
        max_tokens: the most output tokens.
        temperature: sampling temperature (None: the provider's default).
        seed: a sampling seed, where the provider takes one.
        tools: tool definitions (``{"name", "description", "parameters"}``).
    """

    model_config = ConfigDict(frozen=True)

    model: str
    messages: tuple[Message, ...]
    output_schema: dict[str, Any] | None = None
    output_name: str = "output"
    max_tokens: int = 512
    temperature: float | None = 0.0
    seed: int | None = None
    tools: tuple[dict[str, Any], ...] = ()

    def canonical(self) -> bytes:
        """The request as canonical JSON (sorted keys): equal requests, equal bytes."""
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)

    def key(self, provider: str) -> str:
        """A hash of the provider and the canonical request (a cassette's key)."""
        digest = hashlib.sha256(provider.encode() + b"\0" + self.canonical())
        return digest.hexdigest()

    def prompt_chars(self) -> int:
        """Characters of every message (a token estimate before the call is made)."""
        return sum(len(m.content) for m in self.messages) + len(
            orjson.dumps(self.output_schema) if self.output_schema else b""
        )


class LLMResult(BaseModel):
    """One model call's answer, normalized.

    Attributes:
        text: the answer's text (for tool-forced structured output: the tool's arguments as
            JSON).
        tool_calls: the tools the model asked to call.
        finish_reason: why it stopped (``length``: cut off at ``max_tokens``).
        usage: its tokens.
        cost_usd: its price (None: the price table does not know the model).
        prices: the price table that gave it (``genai-prices 0.2.3``), or why none did.
        model: the model that answered, as the provider names it.
        provider: ``openai``, ``anthropic``, ``local``, ...
        request_id: the provider's id of the request.
        rate_limits: the provider's rate-limit response headers.
        latency_ms: from request to full answer.
        raw: the provider's answer as JSON data (for debugging; cassettes keep it).
    """

    model_config = ConfigDict(frozen=True)

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = "stop"
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None
    prices: str | None = None
    model: str = ""
    provider: str = ""
    request_id: str | None = None
    rate_limits: dict[str, str] = Field(default_factory=dict)
    latency_ms: float = 0.0
    raw: dict[str, Any] | None = None


def rate_limit_headers(headers: Any) -> dict[str, str]:
    """The rate-limit headers of a response (``x-ratelimit-*``,
    ``anthropic-ratelimit-*``, ``retry-after``), lower-cased."""
    found: dict[str, str] = {}
    if headers is None:
        return found
    for name, value in headers.items():
        low = str(name).lower()
        if "ratelimit" in low or low in ("retry-after", "retry-after-ms"):
            found[low] = str(value)
    return found
