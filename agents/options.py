"""How an agent runs, as one value: :class:`AgentOptions` (what ``App.agent``, ``App.join`` and
``App.batch`` take as ``options=`` or as the same names as keywords, :class:`RunOptions`); and
how a worker runs its agents, :class:`WorkerOptions` (likewise, :class:`WorkerKeywords`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TypedDict

from agents.breaker import BreakerPolicy
from agents.hooks import Hook
from agents.llm.adapter import ModelAdapter
from agents.llm.settings import LLMSettings
from agents.retry import DEFAULT_RETRY, RetryPolicy
from blackboard.errors import AgentError
from scheduler.batching import BatchSettings
from scheduler.budgets import Budget
from scheduler.policies import PolicyLike, PolicySpec, as_spec
from scheduler.ratelimit import RateLimit
from scheduler.retrybudget import RetryBudget

#: Every agent's circuit breaker unless it says otherwise.
DEFAULT_BREAKER = BreakerPolicy()


class RunOptions(TypedDict, total=False):
    """The :class:`AgentOptions` fields, as keyword arguments."""

    concurrency: int
    retry: RetryPolicy | None
    breaker: BreakerPolicy | None
    policy: PolicyLike | None
    rate_limit: RateLimit | None
    retry_budget: RetryBudget | None
    hooks: Sequence[Hook]
    model: str | None
    budgets: Sequence[Budget]


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """How an agent runs.

    Attributes:
        concurrency: most handler calls running at once in one worker process.
        retry: attempts, backoff and time limit of a failing handler before its record is
            dead-lettered (None: :data:`agents.retry.DEFAULT_RETRY`, 3 attempts).
        breaker: when consecutive failures pause the agent (None: never).
        policy: which ready record runs next (``"srpt"``, a :class:`scheduler.PolicySpec`,
            ...; None: the worker's default).
        rate_limit: handler calls and reported tokens per second (None: unlimited).
        retry_budget: the share of calls that may be retries per artifact type and tenant;
            retries beyond it wait (None: the worker's default, else unlimited).
        hooks: the agent's own :class:`~agents.hooks.Hook`\\ s, after the built-in ones.
        model: the model ``ctx.llm`` calls when a call names none (``openai:gpt-4o-mini``;
            None: ``BLACKBOARD_LLM_MODEL``).
        budgets: cost and token budgets of its model calls (:class:`scheduler.budgets.Budget`).
    """

    concurrency: int = 64
    retry: RetryPolicy = DEFAULT_RETRY
    breaker: BreakerPolicy | None = DEFAULT_BREAKER
    policy: PolicySpec | None = None
    rate_limit: RateLimit | None = None
    retry_budget: RetryBudget | None = None
    hooks: tuple[Hook, ...] = ()
    model: str | None = None
    budgets: tuple[Budget, ...] = ()

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise AgentError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.retry is None:  # as the keyword means: the default policy
            object.__setattr__(self, "retry", DEFAULT_RETRY)

    @classmethod
    def of(cls, options: AgentOptions | None = None, **run: object) -> AgentOptions:
        """``options`` (default: the defaults) with the keyword arguments given on top.

        Raises:
            AgentError: an unknown option, or a concurrency below 1.
            ConfigError: an unknown scheduling policy.
        """
        base = options or cls()
        if not run:
            return base
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(run) - known)
        if unknown:
            raise AgentError(f"unknown agent option(s) {', '.join(unknown)}")
        values = dict(run)
        if "retry" in values and values["retry"] is None:
            values["retry"] = DEFAULT_RETRY
        if values.get("policy") is not None:
            values["policy"] = as_spec(values["policy"])  # type: ignore[arg-type]
        for name in ("hooks", "budgets"):
            if name in values:
                values[name] = tuple(values[name])  # type: ignore[arg-type]
        return replace(base, **values)  # type: ignore[arg-type]


class WorkerKeywords(TypedDict, total=False):
    """The :class:`WorkerOptions` fields, as keyword arguments."""

    agents: Sequence[str] | None
    slot: str
    gc_gen0_threshold: int | None
    policy: PolicyLike | None
    batch: BatchSettings | None
    retry_budget: RetryBudget | None
    llm: LLMSettings | None
    models: Mapping[str, ModelAdapter] | None


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker runs its agents.

    Attributes:
        agents: names of the agents to run (None: all).
        slot: this worker's slot label (member names; transactional ids on Kafka).
        gc_gen0_threshold: while the worker runs, the garbage collector's first-generation
            threshold. Buffered records are young objects that outlive collections, and every
            young collection walks them again: CPython's default 700 spends ~25% of the time
            collecting at full speed, 5,000 still ~15% on the Kafka benchmark, 100,000 ~1%
            (most records are freed by reference counting before a collection comes). The
            price is cyclic garbage of up to that many objects. None leaves it alone.
        policy: the scheduling policy of agents that name none (None: ``fifo``); the runners
            share one :class:`scheduler.Ledger` of service statistics.
        batch: operators' overrides of batch sizes and windows per type
            (:class:`scheduler.batching.BatchSettings`; None: from ``BLACKBOARD_BATCH``).
        retry_budget: the retry budget of agents that set none (None: none).
        llm: how model calls run: the cassette, re-asks, waits (None: from
            ``BLACKBOARD_LLM_*``).
        models: model string -> adapter to use instead (a test's stand-in; no monkeypatching).
    """

    agents: tuple[str, ...] | None = None
    slot: str = "0"
    gc_gen0_threshold: int | None = 100_000
    policy: PolicyLike | None = None
    batch: BatchSettings | None = None
    retry_budget: RetryBudget | None = None
    llm: LLMSettings | None = None
    models: Mapping[str, ModelAdapter] | None = None

    @classmethod
    def of(cls, options: WorkerOptions | None = None, **given: object) -> WorkerOptions:
        """``options`` (default: the defaults) with the keyword arguments given on top."""
        base = options or cls()
        if not given:
            return base
        values = dict(given)
        if values.get("agents") is not None:
            values["agents"] = tuple(values["agents"])  # type: ignore[arg-type]
        return replace(base, **values)  # type: ignore[arg-type]
