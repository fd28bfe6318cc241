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

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from pydantic import BaseModel

from agents.breaker import BreakerPolicy
from agents.retry import DEFAULT_RETRY, RetryPolicy
from blackboard.artifacts import ArtifactType, TypeRegistry, default_registry
from blackboard.errors import AgentError

HandlerResult: TypeAlias = BaseModel | Sequence[BaseModel] | None
Handler: TypeAlias = Callable[[Any, Any], Awaitable[HandlerResult]]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: Every agent's circuit breaker unless it says otherwise.
DEFAULT_BREAKER = BreakerPolicy()


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
    """

    name: str
    consumes: tuple[ArtifactType, ...]
    publishes: tuple[ArtifactType, ...]
    handler: Handler
    concurrency: int = 64
    ordered: bool = False
    retry: RetryPolicy = DEFAULT_RETRY
    breaker: BreakerPolicy | None = DEFAULT_BREAKER

    def may_publish(self, art_type: ArtifactType) -> bool:
        """Whether the agent declared ``art_type`` among its outputs."""
        return art_type in self.publishes


class App:
    """A set of agents and the artifact types they use, run by a worker process.

    Args:
        name: the application's name (logs only).
        registry: where the artifact types are registered (default: the global one).
    """

    def __init__(self, name: str = "app", *, registry: TypeRegistry | None = None) -> None:
        self.name = name
        self.registry = registry or default_registry
        self.agents: dict[str, AgentSpec] = {}

    def agent(
        self,
        *,
        consumes: type[BaseModel] | Sequence[type[BaseModel]],
        publishes: type[BaseModel] | Sequence[type[BaseModel]] = (),
        name: str | None = None,
        concurrency: int = 64,
        ordered: bool = False,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = DEFAULT_BREAKER,
    ) -> Callable[[Handler], Handler]:
        """Decorator adding an async handler as an agent.

        ``retry`` (default :data:`agents.retry.DEFAULT_RETRY`: 3 attempts) says how a failing
        handler is retried before its record is dead-lettered; ``breaker`` (None: none) when
        consecutive failures pause the agent.

        Raises:
            AgentError: a bad name, a duplicate name, no consumed type or a sync handler.
            UnknownTypeError: a model that is not a registered artifact type.
        """

        def add(handler: Handler) -> Handler:
            self.add(
                handler,
                consumes=consumes,
                publishes=publishes,
                name=name,
                concurrency=concurrency,
                ordered=ordered,
                retry=retry,
                breaker=breaker,
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
        concurrency: int = 64,
        ordered: bool = False,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = DEFAULT_BREAKER,
    ) -> AgentSpec:
        """Add an agent without the decorator; see :meth:`agent`."""
        import inspect

        agent_name: str = name or str(getattr(handler, "__name__", ""))
        if not _NAME.match(agent_name):
            raise AgentError(f"agent name {agent_name!r} must match {_NAME.pattern}")
        if agent_name in self.agents:
            raise AgentError(f"an agent named {agent_name!r} is already in app {self.name!r}")
        if not inspect.iscoroutinefunction(handler):
            raise AgentError(f"the handler of agent {agent_name!r} must be an async function")
        if concurrency < 1:
            raise AgentError(f"agent {agent_name!r}: concurrency must be >= 1, got {concurrency}")
        ins = tuple(self.registry.of(m) for m in _as_list(consumes))
        if not ins:
            raise AgentError(f"agent {agent_name!r} consumes no artifact type")
        outs = tuple(self.registry.of(m) for m in _as_list(publishes))
        spec = AgentSpec(
            agent_name,
            ins,
            outs,
            handler,
            concurrency,
            ordered,
            retry or DEFAULT_RETRY,
            breaker,
        )
        self.agents[agent_name] = spec
        return spec

    def types(self) -> list[ArtifactType]:
        """Every type the app's agents consume or publish."""
        seen: dict[tuple[str, int], ArtifactType] = {}
        for spec in self.agents.values():
            for t in spec.consumes + spec.publishes:
                seen[(t.name, t.version)] = t
        return [seen[k] for k in sorted(seen)]


def _as_list(models: type[BaseModel] | Sequence[type[BaseModel]]) -> list[type[BaseModel]]:
    if isinstance(models, type):
        return [models]
    return list(models)
