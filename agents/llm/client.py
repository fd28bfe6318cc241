"""Model calls from handlers: what ``ctx.llm(Review, prompt)`` does.

One call, whatever the adapter: the cassette answers or records; the endpoint's gate waits out
a 429's ``Retry-After`` (every agent of the process calling that endpoint waits with it) and
learns a rate from repeated 429s; the agent's rate limit is charged a request for every model
request past the handler call's first and the tokens it will use (reserved before, corrected
from the reported usage after); budgets are checked before and charged after; quota exhausted
opens the agent's breaker at once. Structured output is validated strictly into the declared
type, repaired for syntax only, and re-asked at most ``max_reasks`` times with the errors; past
that (or on a truncated answer) :class:`~blackboard.errors.LLMOutputError` dead-letters the
record at stage ``llm_output``. Each call is one span with the GenAI attributes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from agents.llm.cassette import Cassette
from agents.llm.gate import Gates
from agents.llm.models import Models
from agents.llm.pricing import price
from agents.llm.result import LLMRequest, LLMResult, Message, Usage
from agents.llm.settings import LLMSettings
from agents.llm.structured import output_schema, reask_prompt, schema_prompt, validate
from blackboard.errors import (
    BudgetExceededError,
    ConfigError,
    LLMError,
    LLMOutputError,
)
from observability import tracing
from scheduler.budgets import WAIT, Budget, BudgetLedger

if TYPE_CHECKING:
    from agents.breaker import CircuitBreaker
    from agents.context import Context
    from agents.llm.adapter import ModelAdapter
    from agents.llm.models import ModelRef
    from scheduler.ratelimit import Limiter

T = TypeVar("T", bound=BaseModel)

#: Characters per token, for estimates made before a call (reserved, then corrected).
CHARS_PER_TOKEN = 4


@dataclass(slots=True)
class LLMStats:
    """A worker's model calls, summed (``blackboard demo --json`` prints them)."""

    calls: int = 0
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    reasks: int = 0
    output_failures: int = 0
    rate_limited: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The counters as a JSON object."""
        return {
            "calls": self.calls,
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 8),
            "reasks": self.reasks,
            "output_failures": self.output_failures,
            "rate_limited": self.rate_limited,
            "errors": self.errors,
        }


@dataclass(slots=True)
class LLMCall:
    """One ``ctx.llm`` call as it ended: its last answer, and what every request of it used."""

    model: str
    provider: str
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = 0.0
    prices: str | None = None
    reasks: int = 0
    requests: int = 0
    result: LLMResult | None = None
    error: str | None = None


class LLMRuntime:
    """A worker's model machinery, shared by its agents: adapters, gates, the cassette, the
    budget ledger and the counters.

    Args:
        settings: re-asks, waits, the cassette (None: from ``BLACKBOARD_LLM_*``).
        models: model string -> adapter to use instead of the string's (tests, stand-ins).
    """

    def __init__(
        self,
        settings: LLMSettings | None = None,
        models: Mapping[str, ModelAdapter] | None = None,
    ) -> None:
        self.settings = settings = settings if settings is not None else LLMSettings.from_env()
        self.models = Models(models, settings.timeout_s)
        self.gates = Gates()
        mode = settings.mode()
        self.cassette = (
            Cassette(settings.cassette, mode)
            if settings.cassette is not None and mode != "off"
            else None
        )
        self.ledger = BudgetLedger()
        self.stats = LLMStats()

    def for_agent(
        self,
        agent: str,
        *,
        model: str | None = None,
        limiter: Limiter | None = None,
        breaker: CircuitBreaker | None = None,
        budgets: Sequence[Budget] = (),
    ) -> AgentLLM:
        """The handle one agent's handlers call through ``ctx.llm``."""
        return AgentLLM(self, agent, model, limiter, breaker, tuple(budgets))

    async def aclose(self) -> None:
        """Close the adapters and the cassette."""
        await self.models.aclose()
        if self.cassette is not None:
            self.cassette.close()


class AgentLLM:
    """Model calls of one agent (see the module docstring)."""

    def __init__(
        self,
        runtime: LLMRuntime,
        agent: str,
        model: str | None,
        limiter: Limiter | None,
        breaker: CircuitBreaker | None,
        budgets: tuple[Budget, ...],
    ) -> None:
        self.runtime = runtime
        self.agent = agent
        self.model = model
        self.limiter = limiter
        self.breaker = breaker
        self.budgets = budgets

    async def generate(
        self,
        ctx: Context,
        output: type[T] | None,
        prompt: str | Sequence[Message],
        *,
        model: str | None = None,
        system: str | None = None,
        max_tokens: int = 512,
        temperature: float | None = 0.0,
        seed: int | None = None,
        max_reasks: int | None = None,
    ) -> tuple[T | str, LLMCall]:
        """Ask ``model`` (default: the agent's, else ``BLACKBOARD_LLM_MODEL``); the answer as
        ``output`` (validated) or, with ``output`` None, as text.

        Raises:
            LLMOutputError: no answer validated within the re-asks, or the last was cut off.
            LLMError: the model call failed (after waiting out 429s up to ``max_wait_s``).
            BudgetExceededError: the call would pass a budget.
            ConfigError: no model is named anywhere.
        """
        runtime = self.runtime
        ref = model or self.model or runtime.settings.model
        if ref is None:
            raise ConfigError(
                f"agent {self.agent!r} calls a model but names none: pass model=..., or set "
                "BLACKBOARD_LLM_MODEL"
            )
        adapter, parsed = runtime.models.get(ref)
        messages = _messages(prompt, system, output, adapter.structured)
        request = LLMRequest(
            model=parsed.name,
            messages=messages,
            output_schema=output_schema(output) if output is not None else None,
            output_name=output.__name__ if output is not None else "output",
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
        )
        reasks = runtime.settings.max_reasks if max_reasks is None else max_reasks
        call = LLMCall(model=parsed.shown, provider=adapter.provider)
        ctx.llm_calls.append(call)
        runtime.stats.calls += 1
        start_ns = time.time_ns()
        error: BaseException | None = None
        try:
            return await self._ask(ctx, adapter, parsed, request, output, reasks, call), call
        except BaseException as exc:
            error = exc
            call.error = _error_kind(exc)
            raise
        finally:
            tracing.model_call(
                ctx.spec.name, ctx.envelope, f"chat {parsed.name}", start_ns,
                _attributes(call, parsed.name, request), error,
            )  # fmt: skip

    async def _ask(
        self,
        ctx: Context,
        adapter: ModelAdapter,
        ref: ModelRef,
        request: LLMRequest,
        output: type[T] | None,
        max_reasks: int,
        call: LLMCall,
    ) -> T | str:
        stats = self.runtime.stats
        while True:
            result = await self._request(ctx, adapter, ref, request, call)
            if output is None:
                return result.text
            if result.finish_reason == "length":
                errors: tuple[str, ...] = (
                    f"the answer was cut off at max_tokens={request.max_tokens}",
                )
                truncated = True
            else:
                value, errors, _ = validate(output, result.text)
                if value is not None:
                    return value
                truncated = False
            if call.reasks >= max_reasks:
                stats.output_failures += 1
                raise LLMOutputError(
                    f"{ref.shown} gave no valid {output.__name__} after {call.reasks} re-ask(s)"
                    f"{' (cut off)' if truncated else ''}: {'; '.join(errors)}; "
                    f"raw: {result.text[:1000]!r}",
                    raw=result.text,
                    errors=errors,
                    truncated=truncated,
                )
            call.reasks += 1
            stats.reasks += 1
            hint = (
                "Your answer was cut off. Answer again, shorter, with only the JSON value."
                if truncated
                else reask_prompt(output, errors)
            )
            request = request.model_copy(
                update={
                    "messages": (
                        *request.messages,
                        Message(role="assistant", content=result.text),
                        Message(role="user", content=hint),
                    )
                }
            )

    async def _request(
        self, ctx: Context, adapter: ModelAdapter, ref: ModelRef, request: LLMRequest, call: LLMCall
    ) -> LLMResult:
        """One model request, through budgets, limits, the gate and the cassette."""
        runtime = self.runtime
        estimate = request.prompt_chars() // CHARS_PER_TOKEN + request.max_tokens
        held = await self._reserve_budgets(ctx, ref, estimate)
        try:
            result = await self._call(ctx, adapter, ref, request, call, estimate)
        except BaseException:
            self._settle_budgets(held, estimate, 0, 0.0)  # nothing answered: nothing spent
            raise
        cost, prices = result.cost_usd, result.prices
        if prices is None:
            cost, prices = price(adapter.provider, result.model or request.model, result.usage)
        self._settle_budgets(held, estimate, result.usage.total, cost or 0.0)
        call.result = result
        call.usage = call.usage + result.usage
        call.cost_usd = None if cost is None or call.cost_usd is None else call.cost_usd + cost
        call.prices = prices
        stats = runtime.stats
        stats.input_tokens += result.usage.input_tokens
        stats.output_tokens += result.usage.output_tokens
        stats.cost_usd += cost or 0.0
        return result

    async def _call(
        self,
        ctx: Context,
        adapter: ModelAdapter,
        ref: ModelRef,
        request: LLMRequest,
        call: LLMCall,
        estimate: int,
    ) -> LLMResult:
        """The request through the gate, the rate limit and the cassette, 429s waited out."""
        runtime = self.runtime
        cassette = runtime.cassette
        replaying = cassette is not None and cassette.mode == "replay"
        gate = runtime.gates.of(ref.endpoint)
        deadline = time.monotonic() + runtime.settings.max_wait_s
        while True:
            if not replaying:
                await gate.acquire()
                await self._charge_request(ctx, estimate)
            try:
                if cassette is not None:
                    result = await cassette.call(
                        adapter.provider, request, lambda: adapter.complete(request)
                    )
                else:
                    result = await adapter.complete(request)
            except LLMError as exc:
                call.requests += 1
                runtime.stats.requests += 1
                if not replaying:
                    self._correct_tokens(estimate, 0)
                if exc.kind == "rate_limited":
                    runtime.stats.rate_limited += 1
                    wait = exc.retry_after_s or gate.default_pause_s
                    if not replaying:
                        gate.throttled(exc.retry_after_s)
                        if self.limiter is not None and exc.retry_after_s:
                            # New handler calls of the agent wait too.
                            self.limiter.hold(asyncio.get_running_loop().time(), wait)
                    if time.monotonic() + wait <= deadline:
                        continue  # not a failure: wait with every caller of the endpoint
                runtime.stats.errors += 1
                if exc.kind == "quota_exhausted" and self.breaker is not None:
                    self.breaker.trip()
                raise
            break
        if not replaying:
            gate.succeeded()
        call.requests += 1
        runtime.stats.requests += 1
        if not replaying:
            self._correct_tokens(estimate, result.usage.total)
        return result

    async def _charge_request(self, ctx: Context, estimate: int) -> None:
        """The agent's rate limit: a request for each model request past the handler call's
        first (the start gate took that one), and the estimated tokens, reserved."""
        limiter = self.limiter
        if limiter is None:
            return
        loop = asyncio.get_running_loop()
        if ctx.llm_requests > 0:
            while (wait := limiter.wait_s(loop.time())) > 0:  # noqa: ASYNC110 - a rate, not an event
                await asyncio.sleep(wait)
            limiter.started(loop.time())
        ctx.llm_requests += 1
        limiter.used_tokens(loop.time(), float(estimate))

    def _correct_tokens(self, estimate: int, used: int) -> None:
        if self.limiter is not None and used != estimate:
            self.limiter.used_tokens(asyncio.get_running_loop().time(), float(used - estimate))

    async def _reserve_budgets(
        self, ctx: Context, ref: ModelRef, estimate: int
    ) -> list[tuple[Budget, str, float]]:
        """Check every budget and hold the call's estimate in each until it settles, so calls
        running at once cannot all pass a budget that only one of them fits: a call that fits
        what was spent but not with what calls in flight hold waits for them to settle.

        Raises:
            BudgetExceededError: a budget that dead-letters would be passed.
        """
        if not self.budgets:
            return []
        ledger, env = self.runtime.ledger, ctx.envelope
        cost = price(ref.provider, ref.name, Usage(input_tokens=estimate))[0] or 0.0
        held: list[tuple[Budget, str, float]] = []
        try:
            for budget in self.budgets:
                scope = budget.scope(self.agent, env.tenant, env.correlation_id)
                while why := ledger.check(budget, scope, time.time(), estimate, cost):
                    if why == WAIT:
                        await asyncio.sleep(0.01)
                    elif budget.on_exceed == "defer":
                        await asyncio.sleep(ledger.next_window_s(budget, time.time()) + 0.001)
                    else:
                        raise BudgetExceededError(f"budget of {scope}: {why}")
                ledger.hold(budget, scope, time.time(), estimate, cost)
                held.append((budget, scope, cost))
        except BaseException:
            self._settle_budgets(held, estimate, 0, 0.0)
            raise
        return held

    def _settle_budgets(
        self, held: list[tuple[Budget, str, float]], estimate: int, tokens: int, cost: float
    ) -> None:
        """Put what the call used in place of what it held."""
        now = time.time()
        for budget, scope, held_cost in held:
            self.runtime.ledger.settle(budget, scope, now, (estimate, held_cost), tokens, cost)


def _messages(
    prompt: str | Sequence[Message],
    system: str | None,
    output: type[BaseModel] | None,
    structured: str,
) -> tuple[Message, ...]:
    """The conversation: the system message (with the schema, for a model held to it by
    nothing else), then the prompt."""
    if isinstance(prompt, str):
        body: list[Message] = [Message(role="user", content=prompt)]
    else:
        body = list(prompt)
    parts = [system] if system else []
    if output is not None and structured in ("none", "json_object"):
        parts.append(schema_prompt(output))
    if parts:
        return (Message(role="system", content="\n\n".join(parts)), *body)
    return tuple(body)


def _error_kind(error: BaseException) -> str:
    """What ``bb.llm.error`` says: the normalized kind of a failed call."""
    if isinstance(error, LLMError):
        return error.kind
    if isinstance(error, LLMOutputError):
        return "llm_output"
    if isinstance(error, BudgetExceededError):
        return "budget"
    return type(error).__name__


def _attributes(call: LLMCall, model: str, request: LLMRequest) -> dict[str, Any]:
    """The span's GenAI attributes (OpenTelemetry semantic conventions) and ours."""
    result = call.result
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": call.provider,
        "gen_ai.request.model": model,
        "gen_ai.request.max_tokens": request.max_tokens,
        "gen_ai.usage.input_tokens": call.usage.input_tokens,
        "gen_ai.usage.output_tokens": call.usage.output_tokens,
        "bb.llm.model": call.model,
        "bb.llm.cost": call.cost_usd,
        "bb.llm.prices": call.prices,
        "bb.llm.reasks": call.reasks,
        "bb.llm.requests": call.requests,
        "bb.llm.cache_read_tokens": call.usage.cache_read_tokens,
        "bb.llm.cache_write_tokens": call.usage.cache_write_tokens,
    }
    if request.temperature is not None:
        attributes["gen_ai.request.temperature"] = request.temperature
    if result is not None:
        attributes["gen_ai.response.model"] = result.model
        attributes["gen_ai.response.finish_reasons"] = [result.finish_reason]
        if result.request_id:
            attributes["gen_ai.response.id"] = result.request_id
    if call.error is not None:
        attributes["bb.llm.error"] = call.error
    return attributes


_default: LLMRuntime | None = None


def default_runtime() -> LLMRuntime:
    """The process's model machinery for runners given none (made on first use, from
    ``BLACKBOARD_LLM_*``)."""
    global _default
    if _default is None:
        _default = LLMRuntime()
    return _default
