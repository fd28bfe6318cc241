"""OpenAI's chat completions API, and every server that speaks it (vLLM, llama.cpp's server,
Ollama, LM Studio) through a base URL, behind the official ``openai`` SDK with its own retries
off (``max_retries=0``: the SDK would otherwise sleep on ``Retry-After`` inside a call)."""

from __future__ import annotations

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
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class OpenAIAdapter:
    """A model behind an OpenAI-compatible chat completions endpoint.

    Args:
        model: default model name (a request names its own).
        api_key: the key (None: ``OPENAI_API_KEY``; servers that need none get a placeholder).
        base_url: the endpoint (None: OpenAI's, or ``OPENAI_BASE_URL``).
        structured: how to hold the answer to a schema: ``json_schema`` (OpenAI, vLLM,
            llama.cpp's ``llama-server``), ``json_object`` (JSON mode with the schema passed
            along, as llama-cpp-python's server takes it) or ``none``.
        timeout_s: the longest a request may take.
        provider: the name spans and prices use (``openai`` unless another server is meant).
    """

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        structured: StructuredMode = "json_schema",
        timeout_s: float = 120.0,
        provider: str = "openai",
    ) -> None:
        try:
            import openai
        except ImportError as exc:  # pragma: no cover - a dependency of the llm extra
            raise MissingDependencyError(
                "OpenAI models need the openai package: pip install 'kafka-blackboard[llm]'"
            ) from exc
        import os

        key = api_key or os.environ.get("OPENAI_API_KEY") or ("none" if base_url else None)
        if key is None:
            raise MissingDependencyError(
                f"model openai:{model} needs an API key: set OPENAI_API_KEY"
            )
        self.model = model
        self.provider = provider
        self._secrets = (key,)
        self.structured: StructuredMode = structured
        self._openai = openai
        import httpx2  # the SDK's HTTP client (openai 3.x): its responses, read as JSON here

        self._raw_type = httpx2.Response
        self._client = openai.AsyncOpenAI(
            api_key=key,
            base_url=base_url,
            max_retries=0,
            timeout=timeout_s,
            http_client=aiohttp_client(openai, timeout_s),
        )

    async def complete(self, request: LLMRequest) -> LLMResult:
        """One chat completion (see :meth:`agents.llm.adapter.ModelAdapter.complete`).

        Posted through the SDK's client (its auth, base URL, timeouts and errors), with the
        body built here and the answer read as JSON: the SDK's typed request transform and
        response models cost more CPU than the rest of a call at high concurrency."""
        openai = self._openai
        body = self._body(request)
        started = time.monotonic()
        try:
            response = await self._client.post(
                "/chat/completions", cast_to=self._raw_type, body=body
            )
        except openai.APIStatusError as exc:
            code, message = error_code(exc.body)
            kind = classify(exc.status_code, code, message or str(exc))
            raise self._fail(
                message or str(exc),
                kind,
                status=exc.status_code,
                retry_after_s=retry_after_s(exc.response.headers),
                request_id=exc.response.headers.get("x-request-id"),
            ) from None
        except openai.APITimeoutError as exc:
            if cut_not_timed_out(exc):
                raise self._fail("connection failed: the server closed it", "server") from None
            raise self._fail("the request timed out", "timeout") from None
        except openai.APIConnectionError as exc:
            raise self._fail(f"connection failed: {exc.__cause__ or exc}", "server") from None
        except openai.OpenAIError as exc:  # a malformed answer
            raise self._fail(str(exc), "server") from None
        try:
            completion = orjson.loads(response.content)
            return self._result(completion, response.headers, time.monotonic() - started)
        except (orjson.JSONDecodeError, KeyError, TypeError, IndexError, ValueError) as exc:
            raise self._fail(f"unreadable answer: {type(exc).__name__}: {exc}", "server") from None

    def _body(self, request: LLMRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": [_message(m) for m in request.messages],
            "max_tokens": request.max_tokens,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.seed is not None:
            body["seed"] = request.seed
        schema = request.output_schema
        if schema is not None and self.structured == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.output_name, "schema": schema},
            }
        elif schema is not None and self.structured == "json_object":
            body["response_format"] = {"type": "json_object", "schema": schema}
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t["name"],
                        "description": t.get("description", ""),
                        "parameters": t.get("parameters", {"type": "object"}),
                    },
                }
                for t in request.tools
            ]
        return body

    def _result(self, completion: Any, headers: Any, seconds: float) -> LLMResult:
        """The normalized result of a chat completion's JSON.

        Raises:
            LLMError: an answer without choices.
        """
        choices = completion.get("choices") or ()
        if not choices:
            raise self._fail("an answer with no choices", "server")
        choice = choices[0]
        message = choice.get("message") or {}
        calls = tuple(
            ToolCall(
                id=c.get("id", ""),
                name=c["function"]["name"],
                arguments=_arguments(c["function"].get("arguments")),
            )
            for c in (message.get("tool_calls") or ())
            if c.get("function")
        )
        return LLMResult(
            text=message.get("content") or "",
            tool_calls=calls,
            finish_reason=_FINISH.get(choice.get("finish_reason") or "", "other"),
            usage=_usage(completion.get("usage")),
            model=completion.get("model") or "",
            provider=self.provider,
            request_id=headers.get("x-request-id") or completion.get("id"),
            rate_limits=rate_limit_headers(headers),
            latency_ms=round(seconds * 1000.0, 3),
            raw=completion,
        )

    def _fail(self, message: str, kind: ErrorKind, **given: Any) -> LLMError:
        """The error of a failed call, this adapter's key masked in it."""
        return llm_error(message, kind, provider=self.provider, secrets=self._secrets, **given)

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": orjson.dumps(c.arguments).decode()},
            }
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _arguments(text: str | None) -> dict[str, Any]:
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_value": value}


def _usage(usage: Any) -> Usage:
    if not usage:
        return Usage()
    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=usage.get("prompt_tokens") or 0,
        output_tokens=usage.get("completion_tokens") or 0,
        cache_read_tokens=prompt.get("cached_tokens") or 0,
        reasoning_tokens=completion.get("reasoning_tokens") or 0,
    )
