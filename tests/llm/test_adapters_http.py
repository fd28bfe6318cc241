"""The OpenAI and Anthropic adapters over real HTTP, through the official SDKs, against a
fault-injecting server (tests/llm/faultserver.py): normal answers become one normalized
LLMResult, structured output is asked for the provider's way, and every failure becomes an
LLMError of the right kind, after exactly ONE request (the SDKs' own retries are off) and with
no credential in its message."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from agents.llm.adapter import ModelAdapter
from agents.llm.anthropic_adapter import AnthropicAdapter
from agents.llm.openai_adapter import OpenAIAdapter
from agents.llm.result import LLMRequest, LLMResult, Message, ToolCall, Usage
from blackboard.errors import LLMError, LLMRequestError
from tests.llm.faultserver import (
    FaultServer,
    Reply,
    anthropic_error,
    anthropic_message,
    openai_completion,
    openai_error,
)

KEY = "sk-test-SECRETSECRET123"
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["title", "score"],
}
#: An SDK retry would sleep at least ~0.5 s, and a Retry-After of 7 s much longer.
QUICK_S = 2.0


def ask(**kw: Any) -> LLMRequest:
    """A request; no temperature unless given (the Anthropic adapter cannot send one yet: see
    test_anthropic_default_request_with_a_temperature_is_sent)."""
    kw.setdefault("model", "m")
    kw.setdefault("temperature", None)
    kw.setdefault(
        "messages",
        (Message(role="system", content="Be brief."), Message(role="user", content="Hi")),
    )
    return LLMRequest(**kw)


@dataclass(frozen=True)
class Api:
    """What differs between the two providers, for the parametrized tests."""

    name: str
    path: str
    request_id_header: str

    def make(
        self, server: FaultServer, *, api_key: str = KEY, timeout_s: float = 5.0
    ) -> OpenAIAdapter | AnthropicAdapter:
        if self.name == "openai":
            return OpenAIAdapter(
                "m", api_key=api_key, base_url=f"{server.url}/v1", timeout_s=timeout_s
            )
        return AnthropicAdapter(
            "claude-x", api_key=api_key, base_url=server.url, timeout_s=timeout_s
        )

    def ok(self) -> dict[str, Any]:
        return openai_completion() if self.name == "openai" else anthropic_message()

    def error(self, message: str, code: str) -> dict[str, Any]:
        """An error body; ``code`` is OpenAI's ``code`` or Anthropic's ``error.type``."""
        if self.name == "openai":
            return openai_error(message, code=code)
        return anthropic_error(message, type=code)


OPENAI = Api("openai", "/v1/chat/completions", "x-request-id")
ANTHROPIC = Api("anthropic", "/v1/messages", "request-id")
BOTH = pytest.mark.parametrize("api", [OPENAI, ANTHROPIC], ids=lambda a: a.name)

#: Both adapters, for tests that read a 200 answer.
BOTH_READING = pytest.mark.parametrize(
    "api",
    [OPENAI, ANTHROPIC],
    ids=lambda a: a.name,
)


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture
async def adapters() -> AsyncIterator[Callable[..., Any]]:
    """Makes adapters (``adapters(api, server, **kw)``) and closes each at the end."""
    made: list[ModelAdapter] = []

    def make(api: Api, server: FaultServer, **kw: Any) -> Any:
        adapter = api.make(server, **kw)
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        await adapter.aclose()


async def call(adapter: Any, request: LLMRequest) -> tuple[LLMResult, float]:
    started = time.monotonic()
    result = await adapter.complete(request)
    return result, time.monotonic() - started


async def fail(adapter: Any, request: LLMRequest | None = None) -> tuple[LLMError, float]:
    """The adapter's LLMError for one call, and how long the call took."""
    started = time.monotonic()
    with pytest.raises(LLMError) as info:
        await adapter.complete(request or ask())
    return info.value, time.monotonic() - started


def only_request(server: FaultServer, api: Api) -> Any:
    """The one request the server got (asserts there was exactly one, on the API's path)."""
    requests = server.requests
    assert len(requests) == 1, [r.path for r in requests]
    assert requests[0].method == "POST" and requests[0].path == api.path
    return requests[0]


# -- the server itself --------------------------------------------------------------------------


def test_fault_server_shuts_down_even_with_a_delayed_answer_pending() -> None:
    import socket
    import threading

    server = FaultServer()
    server.reply(200, {"ok": True}, delay_s=30)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
    deadline = time.monotonic() + 5
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    closer = threading.Thread(target=server.close)
    closer.start()
    closer.join(timeout=5)
    assert not closer.is_alive() and time.monotonic() - started < 2
    assert server.requests[0].body == {}
    sock.close()
    server.close()  # idempotent


# -- normal answers -----------------------------------------------------------------------------


async def test_openai_answer_is_normalized(fault_server: FaultServer, adapters: Any) -> None:
    fault_server.reply(
        200,
        openai_completion(
            "Hello there",
            model="gpt-test-2024-08",
            usage={
                "prompt_tokens": 100,
                "completion_tokens": 50,
                "total_tokens": 150,
                "prompt_tokens_details": {"cached_tokens": 40},
                "completion_tokens_details": {"reasoning_tokens": 20},
            },
        ),
        headers={
            "x-request-id": "req_abc123",
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-tokens": "9000",
            "x-ratelimit-reset-requests": "120ms",
            "openai-processing-ms": "12",
        },
    )
    adapter = adapters(OPENAI, fault_server)
    result, _ = await call(adapter, ask(model="gpt-test", max_tokens=64, temperature=0.2, seed=7))

    assert result.text == "Hello there"
    assert result.finish_reason == "stop"
    assert result.usage == Usage(
        input_tokens=100,
        output_tokens=50,
        cache_read_tokens=40,
        cache_write_tokens=0,
        reasoning_tokens=20,
    )
    assert result.model == "gpt-test-2024-08"
    assert result.provider == "openai"
    assert result.request_id == "req_abc123"
    assert result.rate_limits == {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-tokens": "9000",
        "x-ratelimit-reset-requests": "120ms",
    }
    assert result.raw is not None and result.raw["id"] == "chatcmpl-123"
    assert result.raw["choices"][0]["message"]["content"] == "Hello there"
    assert result.latency_ms > 0
    assert result.tool_calls == ()

    sent = only_request(fault_server, OPENAI)
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "max_tokens": 64,
        "temperature": 0.2,
        "seed": 7,
    }


async def test_openai_request_id_falls_back_to_the_completion_id(
    fault_server: FaultServer, adapters: Any
) -> None:
    fault_server.reply(200, openai_completion(id="chatcmpl-fallback"))
    result, _ = await call(adapters(OPENAI, fault_server), ask())
    assert result.request_id == "chatcmpl-fallback"
    assert result.rate_limits == {}


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("content_filter", "content_filter"),
        ("something_new", "other"),
    ],
)
async def test_openai_finish_reasons(
    fault_server: FaultServer, adapters: Any, reason: str, expected: str
) -> None:
    fault_server.reply(200, openai_completion("partial answer", finish_reason=reason))
    result, _ = await call(adapters(OPENAI, fault_server), ask())
    assert result.finish_reason == expected
    assert result.text == "partial answer"


async def test_openai_tool_calls_are_parsed(fault_server: FaultServer, adapters: Any) -> None:
    fault_server.reply(
        200,
        openai_completion(
            None,
            finish_reason="tool_calls",
            tool_calls=[
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "kafka"}'},
                }
            ],
        ),
    )
    tool = {"name": "lookup", "description": "Look up", "parameters": {"type": "object"}}
    result, _ = await call(adapters(OPENAI, fault_server), ask(tools=(tool,)))
    assert result.finish_reason == "tool_calls"
    assert result.text == ""
    assert result.tool_calls == (ToolCall(id="call_1", name="lookup", arguments={"q": "kafka"}),)
    sent = only_request(fault_server, OPENAI)
    assert sent.body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look up",
                "parameters": {"type": "object"},
            },
        }
    ]


async def test_anthropic_answer_is_normalized(fault_server: FaultServer, adapters: Any) -> None:
    fault_server.reply(
        200,
        anthropic_message(
            [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}],
            model="claude-x-20250101",
            usage={
                "input_tokens": 10,
                "output_tokens": 7,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 30,
            },
        ),
        headers={
            "request-id": "req_011abc",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-tokens-reset": "2030-01-01T00:00:00Z",
            "anthropic-organization-id": "org-x",
        },
    )
    adapter = adapters(ANTHROPIC, fault_server)
    result, _ = await call(adapter, ask(model="claude-x", max_tokens=64))

    assert result.text == "Hello there"
    assert result.finish_reason == "stop"
    assert result.usage == Usage(
        input_tokens=140,  # 10 uncached + 100 read + 30 written
        output_tokens=7,
        cache_read_tokens=100,
        cache_write_tokens=30,
        reasoning_tokens=0,
    )
    assert result.model == "claude-x-20250101"
    assert result.provider == "anthropic"
    assert result.request_id == "req_011abc"
    assert result.rate_limits == {
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-tokens-reset": "2030-01-01T00:00:00Z",
    }
    assert result.raw is not None and result.raw["id"] == "msg_123"
    assert result.latency_ms > 0

    sent = only_request(fault_server, ANTHROPIC)
    # anthropic 2.x sends the key as a bearer token (older SDKs: x-api-key)
    assert KEY in (sent.headers.get("x-api-key"), sent.headers.get("authorization", "")[7:])
    assert "anthropic-version" in sent.headers
    assert sent.body == {
        "model": "claude-x",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hi"}],
        "system": "Be brief.",
    }


async def test_anthropic_default_request_with_a_temperature_is_sent(
    fault_server: FaultServer, adapters: Any
) -> None:
    fault_server.reply(200, anthropic_message())
    request = LLMRequest(model="claude-x", messages=(Message(role="user", content="Hi"),))
    assert request.temperature == 0.0  # the default
    result = await adapters(ANTHROPIC, fault_server).complete(request)
    assert result.text == "hello"
    sent = only_request(fault_server, ANTHROPIC)
    # on the wire (extra_body) if it is sent at all; never a client-side TypeError
    assert sent.body.get("temperature", 0.0) == 0.0


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
    ],
)
async def test_anthropic_finish_reasons(
    fault_server: FaultServer, adapters: Any, reason: str, expected: str
) -> None:
    fault_server.reply(200, anthropic_message(stop_reason=reason))
    result, _ = await call(adapters(ANTHROPIC, fault_server), ask())
    assert result.finish_reason == expected
    assert result.text == "hello"


async def test_anthropic_tool_use_is_a_tool_call(fault_server: FaultServer, adapters: Any) -> None:
    fault_server.reply(
        200,
        anthropic_message(
            [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "kafka"}},
            ],
            stop_reason="tool_use",
        ),
    )
    tool = {"name": "lookup", "description": "Look up", "parameters": {"type": "object"}}
    result, _ = await call(adapters(ANTHROPIC, fault_server), ask(tools=(tool,)))
    assert result.finish_reason == "tool_calls"
    assert result.text == "Let me look."
    assert result.tool_calls == (ToolCall(id="toolu_1", name="lookup", arguments={"q": "kafka"}),)
    sent = only_request(fault_server, ANTHROPIC)
    assert sent.body["tools"] == [
        {"name": "lookup", "description": "Look up", "input_schema": {"type": "object"}}
    ]
    assert "tool_choice" not in sent.body


# -- structured output --------------------------------------------------------------------------


async def test_openai_json_schema_response_format(fault_server: FaultServer, adapters: Any) -> None:
    fault_server.reply(200, openai_completion('{"title": "x", "score": 3}'))
    adapter = adapters(OPENAI, fault_server)
    assert adapter.structured == "json_schema"
    result, _ = await call(adapter, ask(output_schema=SCHEMA, output_name="Review"))
    assert json.loads(result.text) == {"title": "x", "score": 3}
    sent = only_request(fault_server, OPENAI)
    assert sent.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Review", "schema": SCHEMA},
    }


async def test_openai_json_object_response_format(fault_server: FaultServer) -> None:
    fault_server.reply(200, openai_completion('{"title": "x", "score": 3}'))
    adapter = OpenAIAdapter(
        "m", api_key=KEY, base_url=f"{fault_server.url}/v1", structured="json_object"
    )
    try:
        await adapter.complete(ask(output_schema=SCHEMA, output_name="Review"))
    finally:
        await adapter.aclose()
    sent = only_request(fault_server, OPENAI)
    assert sent.body["response_format"] == {"type": "json_object", "schema": SCHEMA}


async def test_openai_structured_none_sends_no_response_format(fault_server: FaultServer) -> None:
    fault_server.reply(200, openai_completion('{"title": "x", "score": 3}'))
    adapter = OpenAIAdapter("m", api_key=KEY, base_url=f"{fault_server.url}/v1", structured="none")
    try:
        await adapter.complete(ask(output_schema=SCHEMA))
    finally:
        await adapter.aclose()
    assert "response_format" not in only_request(fault_server, OPENAI).body


@pytest.mark.parametrize(("stop", "finish"), [("tool_use", "stop"), ("max_tokens", "length")])
async def test_anthropic_structured_output_is_a_forced_tool_call(
    fault_server: FaultServer, adapters: Any, stop: str, finish: str
) -> None:
    fault_server.reply(
        200,
        anthropic_message(
            [
                {
                    "type": "tool_use",
                    "id": "toolu_9",
                    "name": "Review",
                    "input": {"title": "x", "score": 3},
                }
            ],
            stop_reason=stop,
        ),
    )
    adapter = adapters(ANTHROPIC, fault_server)
    assert adapter.structured == "tool"
    result, _ = await call(adapter, ask(output_schema=SCHEMA, output_name="Review"))
    assert json.loads(result.text) == {"title": "x", "score": 3}
    assert result.tool_calls == ()  # the forced tool is the answer, not a tool call
    assert result.finish_reason == finish
    sent = only_request(fault_server, ANTHROPIC)
    assert sent.body["tool_choice"] == {"type": "tool", "name": "Review"}
    assert sent.body["tools"] == [
        {
            "name": "Review",
            "description": "Give the answer by calling this tool.",
            "input_schema": SCHEMA,
        }
    ]


# -- rate limits: Retry-After, one request, no hidden sleep -------------------------------------


def _rate_limit_body(api: Api) -> dict[str, Any]:
    if api.name == "openai":
        return openai_error(
            "Rate limit reached for gpt-test on requests per min (RPM): Limit 3, Used 3.",
            code="rate_limit_exceeded",
            type="requests",
        )
    return anthropic_error(
        "Number of requests has exceeded your per-minute rate limit", type="rate_limit_error"
    )


@BOTH
async def test_429_retry_after_seconds(api: Api, fault_server: FaultServer, adapters: Any) -> None:
    fault_server.reply(
        429,
        _rate_limit_body(api),
        headers={
            "retry-after": "7",
            "x-should-retry": "true",  # the SDK would retry if it were allowed to
            api.request_id_header: "req_429",
        },
    )
    error, took = await fail(adapters(api, fault_server))
    assert error.kind == "rate_limited"
    assert error.retry_after_s == 7
    assert error.status == 429
    assert error.request_id == "req_429"
    assert error.provider == api.name
    assert not isinstance(error, LLMRequestError)
    assert took < QUICK_S
    only_request(fault_server, api)


@BOTH
async def test_429_retry_after_http_date(
    api: Api, fault_server: FaultServer, adapters: Any
) -> None:
    when = email.utils.formatdate(time.time() + 5, usegmt=True)
    fault_server.reply(429, _rate_limit_body(api), headers={"retry-after": when})
    error, took = await fail(adapters(api, fault_server))
    assert error.kind == "rate_limited"
    assert error.retry_after_s is not None and 3.0 <= error.retry_after_s <= 5.5
    assert took < QUICK_S
    only_request(fault_server, api)


@BOTH
async def test_429_retry_after_ms_wins(api: Api, fault_server: FaultServer, adapters: Any) -> None:
    fault_server.reply(
        429, _rate_limit_body(api), headers={"retry-after-ms": "1500", "retry-after": "30"}
    )
    error, took = await fail(adapters(api, fault_server))
    assert error.kind == "rate_limited"
    assert error.retry_after_s == pytest.approx(1.5)
    assert took < QUICK_S
    only_request(fault_server, api)


@BOTH
async def test_429_without_retry_after(api: Api, fault_server: FaultServer, adapters: Any) -> None:
    fault_server.reply(429, _rate_limit_body(api))
    error, took = await fail(adapters(api, fault_server))
    assert error.kind == "rate_limited"
    assert error.retry_after_s is None
    assert took < QUICK_S
    only_request(fault_server, api)


async def test_openai_rate_limit_message_mentioning_billing_is_still_rate_limited(
    fault_server: FaultServer, adapters: Any
) -> None:
    fault_server.reply(
        429,
        openai_error(
            "Rate limit reached for gpt-3.5-turbo in organization org-x on requests per min "
            "(RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit "
            "https://platform.openai.com/account/rate-limits to learn more. You can increase "
            "your rate limit by adding a payment method to your account at "
            "https://platform.openai.com/account/billing.",
            code="rate_limit_exceeded",
            type="requests",
        ),
        headers={"retry-after": "20"},
    )
    error, _ = await fail(adapters(OPENAI, fault_server))
    assert error.kind == "rate_limited"
    assert error.retry_after_s == 20


# -- quota --------------------------------------------------------------------------------------


async def test_openai_insufficient_quota(fault_server: FaultServer, adapters: Any) -> None:
    fault_server.reply(
        429,
        openai_error(
            "You exceeded your current quota, please check your plan and billing details.",
            code="insufficient_quota",
            type="insufficient_quota",
        ),
    )
    error, took = await fail(adapters(OPENAI, fault_server))
    assert error.kind == "quota_exhausted"
    assert error.status == 429
    assert took < QUICK_S
    only_request(fault_server, OPENAI)


async def test_anthropic_credit_balance_too_low(fault_server: FaultServer, adapters: Any) -> None:
    fault_server.reply(
        400,
        anthropic_error(
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
            "Billing to upgrade or purchase credits."
        ),
    )
    error, _ = await fail(adapters(ANTHROPIC, fault_server))
    assert error.kind == "quota_exhausted"
    assert error.status == 400
    assert not isinstance(error, LLMRequestError)
    only_request(fault_server, ANTHROPIC)


# -- other statuses -----------------------------------------------------------------------------

#: (status, (openai code, message), (anthropic error type, message), kind)
STATUSES = [
    pytest.param(
        503,
        ("", "The server is overloaded or not ready yet."),
        ("api_error", "Service unavailable"),
        "overloaded",
        id="503",
    ),
    pytest.param(
        500,
        ("", "The server had an error while processing your request."),
        ("api_error", "Internal server error"),
        "server",
        id="500",
    ),
    pytest.param(
        502,
        ("", "Bad gateway"),
        ("api_error", "Bad gateway"),
        "server",
        id="502",
    ),
    pytest.param(
        401,
        ("invalid_api_key", "Incorrect API key provided."),
        ("authentication_error", "invalid x-api-key"),
        "auth",
        id="401",
    ),
    pytest.param(
        403,
        ("unsupported_country_region_territory", "Country not supported"),
        ("permission_error", "Your API key does not have permission to use the model"),
        "auth",
        id="403",
    ),
    pytest.param(
        400,
        (
            "context_length_exceeded",
            "This model's maximum context length is 128000 tokens. However, your messages "
            "resulted in 130000 tokens. Please reduce the length of the messages.",
        ),
        ("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
        "context_window",
        id="400-context",
    ),
    pytest.param(
        400,
        ("invalid_value", "Invalid value for 'temperature': must be between 0 and 2."),
        ("invalid_request_error", "max_tokens: Field required"),
        "invalid_request",
        id="400-other",
    ),
    pytest.param(
        404,
        ("model_not_found", "The model `nope` does not exist"),
        ("not_found_error", "model: nope"),
        "invalid_request",
        id="404",
    ),
]


@BOTH
@pytest.mark.parametrize(("status", "oa", "an", "kind"), STATUSES)
async def test_status_kinds(
    api: Api,
    fault_server: FaultServer,
    adapters: Any,
    status: int,
    oa: tuple[str, str],
    an: tuple[str, str],
    kind: str,
) -> None:
    code, message = oa if api.name == "openai" else an
    fault_server.reply(status, api.error(message, code), headers={api.request_id_header: "r-1"})
    error, took = await fail(adapters(api, fault_server))
    assert error.kind == kind
    assert error.status == status
    assert error.request_id == "r-1"
    assert error.provider == api.name
    assert message.split(":")[0] in str(error)
    request_fault = kind in ("auth", "invalid_request", "context_window")
    assert isinstance(error, LLMRequestError) is request_fault
    if isinstance(error, LLMRequestError):
        assert error.retryable is False
    assert took < QUICK_S
    only_request(fault_server, api)


async def test_anthropic_529_overloaded(fault_server: FaultServer, adapters: Any) -> None:
    fault_server.reply(
        529,
        anthropic_error("Overloaded", type="overloaded_error"),
        headers={"retry-after": "3", "x-should-retry": "true"},
    )
    error, took = await fail(adapters(ANTHROPIC, fault_server))
    assert error.kind == "overloaded"
    assert error.status == 529
    assert error.retry_after_s == 3
    assert not isinstance(error, LLMRequestError)
    assert took < QUICK_S
    only_request(fault_server, ANTHROPIC)


@BOTH
async def test_error_body_that_is_not_json(
    api: Api, fault_server: FaultServer, adapters: Any
) -> None:
    fault_server.queue(
        Reply(502, b"<html><body>502 Bad Gateway</body></html>", {"content-type": "text/html"})
    )
    error, _ = await fail(adapters(api, fault_server))
    assert error.kind == "server"
    assert error.status == 502
    only_request(fault_server, api)


@BOTH_READING
async def test_200_that_is_not_json(api: Api, fault_server: FaultServer, adapters: Any) -> None:
    fault_server.queue(Reply(200, b"{not json"))
    error, _ = await fail(adapters(api, fault_server))
    assert error.kind == "server"
    only_request(fault_server, api)


# -- timeouts and cut connections ---------------------------------------------------------------


@BOTH
async def test_slow_answer_times_out(api: Api, fault_server: FaultServer, adapters: Any) -> None:
    fault_server.reply(200, api.ok(), delay_s=3)
    error, took = await fail(adapters(api, fault_server, timeout_s=0.5))
    assert error.kind == "timeout"
    assert error.status is None
    assert not isinstance(error, LLMRequestError)
    assert 0.4 <= took < QUICK_S
    only_request(fault_server, api)


@BOTH
async def test_cut_connection_is_a_server_error(
    api: Api, fault_server: FaultServer, adapters: Any
) -> None:
    fault_server.cut()
    error, took = await fail(adapters(api, fault_server))
    assert error.kind == "server"
    assert error.status is None
    assert "connection failed" in str(error)
    assert took < QUICK_S
    only_request(fault_server, api)


@BOTH_READING
async def test_adapter_works_again_after_a_fault(
    api: Api, fault_server: FaultServer, adapters: Any
) -> None:
    """A cut connection leaves no broken connection in the pool: the next call succeeds."""
    fault_server.cut()
    fault_server.reply(200, api.ok())
    adapter = adapters(api, fault_server)
    error, _ = await fail(adapter)
    assert error.kind == "server"
    result, _ = await call(adapter, ask())
    assert result.text == "hello"
    assert len(fault_server.requests) == 2


# -- credentials never in messages --------------------------------------------------------------


def _all_text(error: BaseException) -> str:
    return " ".join([str(error), repr(error), *map(str, error.args)])


@BOTH
async def test_api_key_echoed_by_the_server_is_masked(
    api: Api, fault_server: FaultServer, adapters: Any
) -> None:
    message = f"Incorrect API key provided: {KEY}. You can find your API key at the console."
    fault_server.reply(401, api.error(message, "invalid_api_key"))
    error, _ = await fail(adapters(api, fault_server))
    assert error.kind == "auth"
    assert isinstance(error, LLMRequestError) and error.retryable is False
    assert KEY not in _all_text(error)
    assert "SECRETSECRET" not in _all_text(error)
    assert "***" in str(error)
    assert "Incorrect API key provided" in str(error)
    only_request(fault_server, api)


@BOTH
async def test_anthropic_shaped_key_echoed_in_a_bad_request_is_masked(
    api: Api, fault_server: FaultServer, adapters: Any
) -> None:
    key = "sk-ant-api03-AbCdEfGhIjKlMnOp_qrstu-VWXYZ"
    fault_server.reply(400, api.error(f"bad header x-api-key: {key}", "invalid_request_error"))
    error, _ = await fail(adapters(api, fault_server, api_key=key))
    assert error.kind == "invalid_request"
    assert key not in _all_text(error) and "AbCdEfGh" not in _all_text(error)


@BOTH
async def test_any_api_key_given_to_the_adapter_is_masked(
    api: Api, fault_server: FaultServer, adapters: Any
) -> None:
    key = "vllm-team-token-9f8e7d6c5b4a"  # not shaped like sk-..., from no env var
    fault_server.reply(401, api.error(f"unknown token {key}", "invalid_api_key"))
    error, _ = await fail(adapters(api, fault_server, api_key=key))
    assert error.kind == "auth"
    assert key not in _all_text(error)
