"""Anthropic's Messages API (and servers that speak it, through a base URL) behind the official
``anthropic`` SDK, its own retries off (``max_retries=0``). Structured output is a forced tool
call whose input schema is the declared type's."""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from agents.llm.adapter import (
    StructuredMode,
    aiohttp_client,
    classify,
    cut_not_timed_out,
    error_code,
    llm_error,
    retry_after_s,
)
from agents.llm.result import (
    ErrorKind,
    FinishReason,
    LLMRequest,
    LLMResult,
    Message,
    ToolCall,
    Usage,
    rate_limit_headers,
)
from blackboard.errors import LLMError, MissingDependencyError

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicAdapter:
    """A Claude model.

    Args:
        model: default model name.
        api_key: the key (None: ``ANTHROPIC_API_KEY``).
        base_url: the endpoint (None: Anthropic's, or ``ANTHROPIC_BASE_URL``).
        timeout_s: the longest a request may take.
    """

    structured: StructuredMode = "tool"

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        provider: str = "anthropic",
    ) -> None:
        try:
            import anthropic
        except ImportError as exc:  # pragma: no cover - a dependency of the llm extra
            raise MissingDependencyError(
                "Anthropic models need the anthropic package: pip install 'kafka-blackboard[llm]'"
            ) from exc
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if key is None:
            raise MissingDependencyError(
                f"model anthropic:{model} needs an API key: set ANTHROPIC_API_KEY"
            )
        self.model = model
        self.provider = provider
        self._secrets = (key,)
        self._anthropic = anthropic
        self._client = anthropic.AsyncAnthropic(
            api_key=key,
            base_url=base_url,
            max_retries=0,
            timeout=timeout_s,
            http_client=aiohttp_client(anthropic, timeout_s),
        )

    async def complete(self, request: LLMRequest) -> LLMResult:
        """One message (see :meth:`agents.llm.adapter.ModelAdapter.complete`)."""
        anthropic = self._anthropic
        started = time.monotonic()
        try:
            raw = await self._client.messages.with_raw_response.create(**self._body(request))
        except anthropic.APIStatusError as exc:
            code, message = error_code(exc.body)
            kind = classify(exc.status_code, code, message or str(exc))
            raise self._fail(
                message or str(exc),
                kind,
                status=exc.status_code,
                retry_after_s=retry_after_s(exc.response.headers),
                request_id=exc.response.headers.get("request-id"),
            ) from None
        except anthropic.APITimeoutError as exc:
            if cut_not_timed_out(exc):
                raise self._fail("connection failed: the server closed it", "server") from None
            raise self._fail("the request timed out", "timeout") from None
        except anthropic.APIConnectionError as exc:
            raise self._fail(f"connection failed: {exc.__cause__ or exc}", "server") from None
        except anthropic.AnthropicError as exc:
            raise self._fail(str(exc), "server") from None
        try:
            message = await raw.parse()
        except Exception as exc:
            raise self._fail(f"unreadable answer: {exc}", "server") from None
        return self._result(request, message, raw.headers, time.monotonic() - started)

    def _body(self, request: LLMRequest) -> dict[str, Any]:
        system = [m.content for m in request.messages if m.role == "system"]
        body: dict[str, Any] = {
            "model": request.model or self.model,
            "max_tokens": request.max_tokens,
            "messages": [_message(m) for m in request.messages if m.role != "system"],
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.temperature is not None:
            # anthropic 1.x+ takes sampling parameters only as extra body fields.
            body["extra_body"] = {"temperature": request.temperature}
        tools = [
            {
                "name": t["name"],
                "description": t.get("description", ""),
                "input_schema": t.get("parameters", {"type": "object"}),
            }
            for t in request.tools
        ]
        if request.output_schema is not None:
            tools.append(
                {
                    "name": request.output_name,
                    "description": "Give the answer by calling this tool.",
                    "input_schema": request.output_schema,
                }
            )
            body["tool_choice"] = {"type": "tool", "name": request.output_name}
        if tools:
            body["tools"] = tools
        return body

    def _result(self, request: LLMRequest, message: Any, headers: Any, seconds: float) -> LLMResult:
        texts, calls, forced = [], [], None
        for block in message.content or ():
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                if request.output_schema is not None and block.name == request.output_name:
                    forced = block.input
                else:
                    calls.append(ToolCall(id=block.id, name=block.name, arguments=block.input))
        finish = _FINISH.get(message.stop_reason or "", "other")
        text = "".join(texts)
        if forced is not None:  # the structured answer is the forced tool's input
            text = orjson.dumps(forced).decode()
            finish = "length" if finish == "length" else "stop"
        usage = message.usage
        read = getattr(usage, "cache_read_input_tokens", None) or 0
        write = getattr(usage, "cache_creation_input_tokens", None) or 0
        return LLMResult(
            text=text,
            tool_calls=tuple(calls),
            finish_reason=finish,
            usage=Usage(
                input_tokens=(usage.input_tokens or 0) + read + write,
                output_tokens=usage.output_tokens or 0,
                cache_read_tokens=read,
                cache_write_tokens=write,
            ),
            model=message.model or "",
            provider=self.provider,
            request_id=headers.get("request-id") or message.id,
            rate_limits=rate_limit_headers(headers),
            latency_ms=round(seconds * 1000.0, 3),
            raw=message.model_dump(mode="json"),
        )

    def _fail(self, message: str, kind: ErrorKind, **given: Any) -> LLMError:
        """The error of a failed call, this adapter's key masked in it."""
        return llm_error(message, kind, provider=self.provider, secrets=self._secrets, **given)

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()


def _message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id or "",
                    "content": message.content,
                }
            ],
        }
    if message.tool_calls:
        content: list[dict[str, Any]] = []
        if message.content:
            content.append({"type": "text", "text": message.content})
        content.extend(
            {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
            for c in message.tool_calls
        )
        return {"role": "assistant", "content": content}
    return {"role": message.role, "content": message.content}
