"""The agent API: an :class:`App` holds agents; an agent consumes and publishes artifact types.

::

    app = App("research")

    @app.agent(consumes=Idea, publishes=[Review], concurrency=16)
    async def reviewer(idea: Idea, ctx: Context) -> Review:
        ctx.log.info("reviewing", title=idea.title)
        return Review(score=...)

A handler receives one artifact's payload and a :class:`Context`, and returns an output, a
list of outputs or None; it may also publish through ``ctx.publish``. Each agent is a consumer
group named after it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, Unpack

from pydantic import BaseModel

from agents.breaker import BreakerPolicy
from agents.collect import Collector, Extras, KeyFn, build_wanted, correlation_key
from agents.hooks import Hook
from agents.llm.declarative import PromptFn, llm_handler
from agents.options import DEFAULT_BREAKER, AgentOptions, RunOptions
from agents.retry import DEFAULT_RETRY, RetryPolicy
from blackboard.artifacts import ArtifactType, Envelope, TypeRegistry, default_registry
from blackboard.errors import AgentError
from scheduler.batching import BatchControl
from scheduler.budgets import Budget
from scheduler.policies import PolicyLike
from scheduler.ratelimit import RateLimit
from scheduler.retrybudget import RetryBudget

HandlerResult: TypeAlias = BaseModel | Sequence[BaseModel] | None
#: Per-worker resources: ``lifespan(app)`` -> an async context manager yielding a mapping.
Lifespan: TypeAlias = Callable[["App"], Any]
Handler: TypeAlias = Callable[[Any, Any], Awaitable[HandlerResult]]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """One agent: what it consumes and publishes, its handler and how it runs.

    Attributes:
        concurrency: most handler calls running at once in one worker process.
        ordered: records with the same partition key run one at a time, in offset order
            (needed by agents that keep state per key).
        retry: attempts, backoff and time limit of a failing handler before the record is
            dead-lettered.
        breaker: when consecutive failures pause the agent (None: never).
        policy: which ready record runs next (:mod:`scheduler`; None: the worker's default).
        rate_limit: requests/s and reported tokens/s (None: unlimited).
        retry_budget: the share of calls that may be retries per artifact type and tenant;
            retries beyond it are deferred (None: the worker's default, else unlimited).
    """

    name: str
    consumes: tuple[ArtifactType, ...]
    publishes: tuple[ArtifactType, ...]
    handler: Handler
    concurrency: int = 64
    ordered: bool = False
    retry: RetryPolicy = DEFAULT_RETRY
    breaker: BreakerPolicy | None = DEFAULT_BREAKER
    collector: Collector | None = None
    """Set for join and batch agents: the handler gets a JoinSet or Batch when one fires."""
    policy: PolicyLike | None = None
    rate_limit: RateLimit | None = None
    retry_budget: RetryBudget | None = None
    hooks: tuple[Hook, ...] = ()
    """The agent's own hooks (:mod:`agents.hooks`), after the runner's built-in ones."""
    model: str | None = None
    """The model ``ctx.llm`` calls when a call names none."""
    budgets: tuple[Budget, ...] = ()
    """Cost and token budgets of its model calls."""

    def may_publish(self, art_type: ArtifactType) -> bool:
        """Whether the agent declared ``art_type`` among its outputs."""
        return art_type in self.publishes


class App:
    """A set of agents and the artifact types they use, run by a worker process.

    Args:
        name: the application's name (logs only).
        registry: where the artifact types are registered (default: the global one).
    """

    def __init__(
        self,
        name: str = "app",
        *,
        registry: TypeRegistry | None = None,
        lifespan: Lifespan | None = None,
    ) -> None:
        self.name = name
        self.registry = registry or default_registry
        self.agents: dict[str, AgentSpec] = {}
        self.lifespan = lifespan
        """Per-worker resources: ``lifespan(app)`` is an async context manager (or an async
        generator function) yielding a mapping handlers read as ``ctx.resources``; a worker
        enters it before its agents start and leaves it after they stop."""

    def agent(
        self,
        *,
        consumes: type[BaseModel] | Sequence[type[BaseModel]],
        publishes: type[BaseModel] | Sequence[type[BaseModel]] = (),
        name: str | None = None,
        ordered: bool = False,
        options: AgentOptions | None = None,
        **run: Unpack[RunOptions],
    ) -> Callable[[Handler], Handler]:
        """Decorator adding an async handler as an agent.

        How it runs is ``options`` (:class:`agents.options.AgentOptions`) or the same names
        as keywords on top of it: ``concurrency``, ``retry`` (default: 3 attempts), ``breaker``
        (None: none), ``policy`` (which ready record runs next), ``rate_limit``,
        ``retry_budget`` and ``hooks``.

        Raises:
            AgentError: a bad name, a duplicate name, no consumed type, a sync handler or an
                unknown option.
            UnknownTypeError: a model that is not a registered artifact type.
        """

        def add(handler: Handler) -> Handler:
            self.add(
                handler,
                consumes=consumes,
                publishes=publishes,
                name=name,
                ordered=ordered,
                options=options,
                **run,
            )
            return handler

        return add

    def add(
        self,
        handler: Handler,
        *,
        consumes: type[BaseModel] | Sequence[type[BaseModel]],
        publishes: type[BaseModel] | Sequence[type[BaseModel]] = (),
        name: str | None = None,
        ordered: bool = False,
        options: AgentOptions | None = None,
        **run: Unpack[RunOptions],
    ) -> AgentSpec:
        """Add an agent without the decorator; see :meth:`agent`.

        Raises:
            ConfigError: an unknown scheduling policy.
        """
        ins = [self.registry.of(m) for m in _as_list(consumes)]
        if not ins:
            raise AgentError(f"agent {name or _name_of(handler)!r} consumes no artifact type")
        return self._add_spec(handler, ins, publishes, name, ordered, options, run)

    def llm_agent(
        self,
        *,
        consumes: type[BaseModel] | Sequence[type[BaseModel]] | Mapping[type[BaseModel], int],
        publishes: type[BaseModel],
        instructions: str,
        name: str | None = None,
        max_tokens: int = 512,
        temperature: float | None = 0.0,
        max_reasks: int | None = None,
        ordered: bool = False,
        key: KeyFn | None = None,
        timeout_s: float | None = None,
        options: AgentOptions | None = None,
        **run: Unpack[RunOptions],
    ) -> Callable[[PromptFn], PromptFn]:
        """Decorator adding an LLM agent: each input is answered by ``model`` with one
        ``publishes``, validated (:meth:`agents.context.Context.llm`: native structured
        output, syntax-only repair, at most ``max_reasks`` re-asks, then the DLQ at stage
        ``llm_output``). ``instructions`` are the system message; the decorated function
        makes the prompt from the input, ``prompt(payload, ctx) -> str`` (sync or async), and
        names the agent::

            @app.llm_agent(consumes=Idea, publishes=Review, model="openai:gpt-4o-mini",
                           instructions="Review the idea; score it from 1 to 10.")
            def reviewer(idea: Idea, ctx: Context) -> str:
                return f"{idea.title}: {idea.text}"

        ``consumes`` as a mapping (``{Idea: 1, Review: 3}``) makes it a join
        (:meth:`join`): the model reads the idea and its reviews together, the prompt
        function gets the :class:`~agents.collected.JoinSet` (by default every part, by type,
        as JSON); ``key`` and ``timeout_s`` are the join's (a partial set past the timeout is
        dead-lettered, stage ``join``).

        :meth:`add_llm_agent` does without a function (the prompt is the input as JSON).
        ``model`` (a run keyword: None means ``BLACKBOARD_LLM_MODEL``), ``options`` and the
        other run keywords are as for :meth:`agent` (concurrency, policy, rate_limit with
        ``tokens_per_s``, retry, breaker, retry_budget, budgets, hooks).
        """

        def add(prompt: PromptFn) -> PromptFn:
            self.add_llm_agent(
                consumes=consumes,
                publishes=publishes,
                instructions=instructions,
                name=name or str(getattr(prompt, "__name__", "")),
                prompt=prompt,
                max_tokens=max_tokens,
                temperature=temperature,
                max_reasks=max_reasks,
                ordered=ordered,
                key=key,
                timeout_s=timeout_s,
                options=options,
                **run,
            )
            return prompt

        return add

    def add_llm_agent(
        self,
        *,
        consumes: type[BaseModel] | Sequence[type[BaseModel]] | Mapping[type[BaseModel], int],
        publishes: type[BaseModel],
        instructions: str,
        name: str,
        prompt: PromptFn | None = None,
        max_tokens: int = 512,
        temperature: float | None = 0.0,
        max_reasks: int | None = None,
        ordered: bool = False,
        key: KeyFn | None = None,
        timeout_s: float | None = None,
        options: AgentOptions | None = None,
        **run: Unpack[RunOptions],
    ) -> AgentSpec:
        """Add an LLM agent without the decorator; see :meth:`llm_agent`."""
        handler = llm_handler(
            publishes,
            instructions,
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            max_reasks=max_reasks,
        )
        handler.__name__ = name
        if isinstance(consumes, Mapping):
            self.join(
                consumes=consumes,
                publishes=publishes,
                name=name,
                key=key,
                timeout_s=timeout_s,
                options=options,
                **run,
            )(handler)
            return self.agents[name]
        return self.add(
            handler,
            consumes=consumes,
            publishes=publishes,
            name=name,
            ordered=ordered,
            options=options,
            **run,
        )

    def join(
        self,
        *,
        consumes: Mapping[type[BaseModel], int],
        publishes: type[BaseModel] | Sequence[type[BaseModel]] = (),
        name: str | None = None,
        key: KeyFn | None = None,
        timeout_s: float | None = None,
        on_timeout: Handler | None = None,
        extras: Extras = "drop",
        done_ttl_s: float = 3600.0,
        options: AgentOptions | None = None,
        **run: Unpack[RunOptions],
    ) -> Callable[[Handler], Handler]:
        """Decorator adding a join agent: the handler runs once per join key with every part.

        ``consumes`` maps each type to how many parts of it make a complete set, e.g.
        ``{Idea: 1, Review: 3}``. ``key(payload, envelope)`` gives the join key (default: the
        correlation id); parts must be published with it as partition key (the default) so
        one worker holds every part. The handler gets a :class:`agents.collect.JoinSet`
        (``parts[Review]`` → the Review payloads). A partial set older than ``timeout_s`` goes
        to ``on_timeout(joinset, ctx)`` (its outputs are published; it is retried, limited and
        traced like any handler call) or, without one, its parts are dead-lettered (stage
        ``join``). ``extras``: a part beyond its type's count, or arriving after the join
        fired (within ``done_ttl_s``), is dropped or dead-lettered. ``options`` and the run
        keywords are as for :meth:`agent`.
        """

        def add(handler: Handler) -> Handler:
            types, wanted = build_wanted(consumes, self.registry)
            if on_timeout is not None and not inspect.iscoroutinefunction(on_timeout):
                raise AgentError("on_timeout must be an async function")
            collector = Collector(
                "join",
                wanted,
                key or correlation_key,
                timeout_s,
                extras,
                on_timeout,
                done_ttl_s,
                registry=self.registry,
            )
            self._add_spec(handler, types, publishes, name, True, options, run, collector)
            return handler

        return add

    def batch(
        self,
        *,
        consumes: type[BaseModel] | Mapping[type[BaseModel], BatchControl],
        publishes: type[BaseModel] | Sequence[type[BaseModel]] = (),
        name: str | None = None,
        max_records: int = 100,
        max_wait_ms: float = 1000.0,
        key: KeyFn | None = None,
        options: AgentOptions | None = None,
        **run: Unpack[RunOptions],
    ) -> Callable[[Handler], Handler]:
        """Decorator adding a batch agent: the handler gets a :class:`agents.collect.Batch`
        of at most ``max_records`` records, or of what arrived within ``max_wait_ms`` of the
        first, whichever comes first; ``key(payload, envelope)`` keeps one batch per key
        (default: one per partition).

        ``consumes`` is one type (batched with ``max_records`` and ``max_wait_ms``) or maps
        each type to its own :class:`scheduler.batching.BatchControl`, e.g.
        ``{Order: BatchControl(50, 200), Refund: BatchControl(10, 1000)}``: each type is
        batched apart with its size and window (a batch holds one type, ``batch.type`` names
        it). Operators may override sizes and windows per worker (``--batch``,
        ``BLACKBOARD_BATCH``; :mod:`scheduler.batching`). A batch is retried, limited and
        traced the same whether it filled up or its window closed. ``options`` and the run
        keywords are as for :meth:`agent`.

        Raises:
            AgentError: a size < 1 or a window <= 0, or no consumed type.
        """

        def add(handler: Handler) -> Handler:
            if isinstance(consumes, Mapping):
                if not consumes:
                    raise AgentError("a batch agent needs at least one consumed type")
                controls = dict(consumes)
            else:
                controls = {consumes: BatchControl(max_records, max_wait_ms)}
            for model, control in controls.items():
                if not isinstance(control, BatchControl):
                    raise AgentError(
                        f"batch controls must be BatchControl(max_records, max_wait_ms), got "
                        f"{control!r} for {getattr(model, '__name__', model)}"
                    )
            types = [self.registry.of(m) for m in controls]
            collector = Collector.batching(
                {t.name: c for t, c in zip(types, controls.values(), strict=True)},
                key or _one_batch,
                self.registry,
            )
            self._add_spec(handler, types, publishes, name, True, options, run, collector)
            return handler

        return add

    def _add_spec(
        self,
        handler: Handler,
        types: list[ArtifactType],
        publishes: type[BaseModel] | Sequence[type[BaseModel]],
        name: str | None,
        ordered: bool,
        options: AgentOptions | None,
        run: RunOptions,
        collector: Collector | None = None,
    ) -> AgentSpec:
        """Add the agent. Joins and batches are ordered: one key at a time, its state read,
        changed and written."""
        agent_name = self._check(handler, name)
        try:
            opts = AgentOptions.of(options, **run)
        except AgentError as exc:
            raise AgentError(f"agent {agent_name!r}: {exc}") from None
        outs = tuple(self.registry.of(m) for m in _as_list(publishes))
        spec = AgentSpec(
            agent_name,
            tuple(types),
            outs,
            handler,
            opts.concurrency,
            ordered,
            opts.retry,
            opts.breaker,
            collector,
            policy=opts.policy,
            rate_limit=opts.rate_limit,
            retry_budget=opts.retry_budget,
            hooks=opts.hooks,
            model=opts.model,
            budgets=opts.budgets,
        )
        self.agents[agent_name] = spec
        return spec

    def _check(self, handler: Handler, name: str | None) -> str:
        agent_name = name or _name_of(handler)
        if not _NAME.match(agent_name):
            raise AgentError(f"agent name {agent_name!r} must match {_NAME.pattern}")
        if agent_name in self.agents:
            raise AgentError(f"an agent named {agent_name!r} is already in app {self.name!r}")
        if not inspect.iscoroutinefunction(handler):
            raise AgentError(f"the handler of agent {agent_name!r} must be an async function")
        return agent_name

    def types(self) -> list[ArtifactType]:
        """Every type the app's agents consume or publish."""
        seen: dict[tuple[str, int], ArtifactType] = {}
        for spec in self.agents.values():
            for t in spec.consumes + spec.publishes:
                seen[(t.name, t.version)] = t
        return [seen[k] for k in sorted(seen)]


def _name_of(handler: Handler) -> str:
    return str(getattr(handler, "__name__", ""))


def _one_batch(payload: BaseModel, envelope: Envelope) -> str:
    """The default batch key: one batch per partition."""
    return ""


def _as_list(models: type[BaseModel] | Sequence[type[BaseModel]]) -> list[type[BaseModel]]:
    if isinstance(models, type):
        return [models]
    return list(models)
