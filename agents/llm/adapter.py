"""The one interface every model adapter has (:class:`ModelAdapter`), and how a provider's
HTTP failure becomes a normalized :class:`~blackboard.errors.LLMError`."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterable
from typing import Any, Literal, Protocol, runtime_checkable

from agents.llm.result import REQUEST_FAULTS, ErrorKind, LLMRequest, LLMResult
from blackboard.errors import LLMError, LLMRequestError
from blackboard.redact import MASK, redact_secrets

#: How an adapter holds a model to an output schema: the provider's JSON-schema response
#: format, a forced tool call, a grammar (in process), JSON mode (valid JSON, no schema), or
#: nothing (the schema is only in the prompt).
StructuredMode = Literal["json_schema", "tool", "grammar", "json_object", "none"]


@runtime_checkable
class ModelAdapter(Protocol):
    """A model behind one provider's API.

    Attributes:
        provider: who serves it (``openai``, ``anthropic``, ``local``, ...; spans'
            ``gen_ai.provider.name`` and the price table's provider).
        structured: how it constrains structured output natively.
    """

    provider: str
    structured: StructuredMode

    async def complete(self, request: LLMRequest) -> LLMResult:
        """Answer ``request`` once, with no retries of its own.

        Raises:
            LLMError: the call failed (``kind`` says how; :class:`LLMRequestError` when the
                request itself is at fault).
        """
        ...

    async def aclose(self) -> None:
        """Close connections and free the model."""
        ...


def llm_error(
    message: str,
    kind: ErrorKind,
    *,
    provider: str,
    status: int | None = None,
    retry_after_s: float | None = None,
    request_id: str | None = None,
    secrets: Iterable[str] = (),
) -> LLMError:
    """The error for a failed call: an :class:`LLMRequestError` for the request's own faults.
    The message never carries a credential: ``secrets`` (the adapter's key, whatever its
    shape) nor what :func:`blackboard.redact.redact_secrets` finds."""
    cls = LLMRequestError if kind in REQUEST_FAULTS else LLMError
    for secret in secrets:
        if secret and len(secret) >= 6:
            message = message.replace(secret, MASK)
    text = redact_secrets(message)
    return cls(
        f"{provider} {kind}{f' (HTTP {status})' if status else ''}: {text}",
        kind=kind,
        retry_after_s=retry_after_s,
        status=status,
        request_id=request_id,
        provider=provider,
    )


def classify(status: int, code: str, message: str) -> ErrorKind:
    """The normalized kind of an HTTP failure, from its status, the provider's error code or
    type (``insufficient_quota``, ``overloaded_error``, ...) and message."""
    text = f"{code} {message}".lower()
    if status == 429 and code.lower() in ("rate_limit_exceeded", "rate_limit_error"):
        return "rate_limited"  # a rate limit's message may still link to the billing page
    if "quota" in text or "credit balance" in text or "billing" in text or status == 402:
        return "quota_exhausted"
    if status == 429:
        return "rate_limited"
    if (
        "context_length" in text
        or "context window" in text
        or "prompt is too long" in text
        or "maximum context" in text
    ):
        return "context_window"
    if status in (401, 403):
        return "auth"
    if status == 408:
        return "timeout"
    if status in (503, 529) or "overloaded" in text:
        return "overloaded"
    if 400 <= status < 500:
        return "invalid_request"
    return "server"


def retry_after_s(headers: Any, now: float | None = None) -> float | None:
    """Seconds a response asks to wait: ``retry-after-ms``, or ``retry-after`` as seconds or
    an HTTP date (None: it does not say)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_code(body: object) -> tuple[str, str]:
    """``(code or type, message)`` of a provider's JSON error body (OpenAI's
    ``{"error": {"code", "type", "message"}}``, Anthropic's ``{"type": "error", "error":
    {"type", "message"}}``)."""
    if not isinstance(body, dict):
        return "", str(body or "")[:500]
    inner = body.get("error", body)
    if not isinstance(inner, dict):
        return "", str(inner)[:500]
    code = inner.get("code") or inner.get("type") or ""
    return str(code), str(inner.get("message") or "")[:500]


def aiohttp_client(sdk: Any, timeout_s: float) -> Any:
    """The SDK's aiohttp transport (``DefaultAioHttpClient``) when aiohttp is installed, else
    None (its httpx default). httpx's connection pool walks every connection on each request
    and response: at a thousand calls in flight it spent more CPU than the rest of a call
    (``python -m bench.llm``: 4.2 → 2.3 ms of CPU per call)."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return None
    return sdk.DefaultAioHttpClient(timeout=timeout_s)


def cut_not_timed_out(error: BaseException) -> bool:
    """Whether an SDK "timeout" was a connection cut short (the aiohttp transport reports a
    server that closed the connection as a connect timeout): its ``kind`` is ``server``."""
    seen: BaseException | None = error
    while seen is not None:
        name = type(seen).__name__
        if name in ("ServerDisconnectedError", "ClientOSError", "ClientConnectionResetError"):
            return True
        if "Timeout" in name and type(seen).__module__.startswith("aiohttp"):
            return False
        seen = seen.__cause__ or seen.__context__
    return False
