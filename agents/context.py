"""What a handler gets besides the payload: the input's envelope, a logger, publishing, state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from agents.agent import AgentSpec
from blackboard.artifacts import Envelope, TypeRegistry, output_id
from blackboard.errors import AgentError, UndeclaredOutputError
from blackboard.logs import get_logger
from blackboard.records import Record
from observability import tracing

if TYPE_CHECKING:
    from pydantic import BaseModel

    from agents.llm.client import AgentLLM, LLMCall
    from agents.llm.result import Message

M = TypeVar("M", bound="BaseModel")


@dataclass(frozen=True, slots=True)
class Services:
    """What a worker gives its handlers besides the record: the lifespan's resources and the
    agent's model calls."""

    resources: Mapping[str, Any] = field(default_factory=dict)
    llm: AgentLLM | None = None


NO_SERVICES = Services()


@dataclass(slots=True)
class Output:
    """An artifact a handler produced, waiting for the commit."""

    envelope: Envelope
    payload: BaseModel


class KeyedState:
    """An agent's state for one partition: bytes per key, committed with the offsets.

    Writes are seen at once by this handler and, once it succeeds, by later records of the
    partition; they become durable in the same atomic commit as the input's offset.
    """

    __slots__ = ("_base", "_writes")

    def __init__(self, base: dict[str, bytes]) -> None:
        self._base = base
        self._writes: dict[str, bytes | None] = {}

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None."""
        if key in self._writes:
            return self._writes[key]
        return self._base.get(key)

    def set(self, key: str, value: bytes) -> None:
        """Write ``value`` for ``key``."""
        self._writes[key] = bytes(value)

    def delete(self, key: str) -> None:
        """Remove ``key``."""
        self._writes[key] = None

    @property
    def writes(self) -> dict[str, bytes | None]:
        """The writes of this handler call."""
        return self._writes


@dataclass(slots=True)
class Context:
    """Passed to a handler with the payload.

    Attributes:
        envelope: the input artifact's envelope (id, correlation id, causes, tenant, …).
        record: where the input was read (topic, partition, offset).
        attempt: 1 for the first try of this input in this worker.
    """

    spec: AgentSpec
    registry: TypeRegistry
    envelope: Envelope
    record: Record
    attempt: int
    outputs: list[Output] = field(default_factory=list)
    inputs: tuple[Envelope, ...] = ()
    """Join and batch handlers: every artifact that fired (outputs name them all as causes)."""
    tokens: float = 0.0
    """Tokens this call reported (:meth:`report_tokens`), for a tokens/s rate limit."""
    used_state: KeyedState | None = None
    """The state this call read or wrote (None until it used ``state``); the runner keeps
    its writes if the call succeeds."""
    services: Services = NO_SERVICES
    """The worker's resources and model calls (:attr:`resources`, :meth:`llm`)."""
    llm_requests: int = 0
    """Model requests this call made (each past the first is charged to the rate limit)."""
    _llm_calls: list[LLMCall] | None = None
    _state_base: dict[str, bytes] | None = None
    _log: Any = None

    def bind_state(
        self, base: dict[str, bytes] | None, writes: dict[str, bytes | None] | None = None
    ) -> None:
        """Give the call its partition's state view ``base`` (the runner does), starting from
        ``writes`` already made (a timer's removal of what it fired)."""
        self._state_base = base
        if writes is not None:
            self.used_state = KeyedState(base if base is not None else {})
            self.used_state.writes.update(writes)

    @property
    def agent(self) -> str:
        """The agent's name."""
        return self.spec.name

    @property
    def correlation_id(self) -> str:
        """The correlation id every output inherits."""
        return self.envelope.correlation_id

    @property
    def state(self) -> KeyedState:
        """This partition's keyed state (agents declared with ``ordered=True`` only).

        Raises:
            AgentError: the agent is not ordered, so two records of one key could race.
        """
        if not self.spec.ordered:
            raise AgentError(f"agent {self.spec.name!r} uses state: declare it with ordered=True")
        if self.used_state is None:
            self.used_state = KeyedState(self._state_base if self._state_base is not None else {})
        return self.used_state

    def publish(
        self,
        payload: BaseModel,
        *,
        partition_key: str | None = None,
        tenant: str | None = None,
    ) -> Envelope:
        """Add an output; it is committed with this input's offset, or not at all.

        Its id is derived from the agent, the input id and the output's index, so a re-run
        after a crash publishes the same ids. The partition key defaults to the input's.

        Raises:
            UndeclaredOutputError: the agent did not declare the payload's type.
        """
        art_type = self.registry.of(type(payload))
        if not self.spec.may_publish(art_type):
            declared = ", ".join(t.name for t in self.spec.publishes) or "nothing"
            raise UndeclaredOutputError(
                f"agent {self.spec.name!r} published {art_type.name}, but declares {declared}"
            )
        env, agent = self.envelope, self.spec.name
        causes = tuple(e.id for e in self.inputs) if self.inputs else (env.id,)
        out = Envelope(
            output_id(agent, causes, len(self.outputs)),
            art_type.name,
            art_type.version,
            env.correlation_id,
            causes,
            partition_key if partition_key is not None else env.partition_key,
            tenant or env.tenant,
            agent,
            datetime.now(UTC),
            tracing.child_traceparent(),  # its send span's, when tracing is on
        )
        self.outputs.append(Output(out, payload))
        return out

    @property
    def resources(self) -> Mapping[str, Any]:
        """What the app's lifespan yielded for this worker (model clients, HTTP pools, ...)."""
        return self.services.resources

    @property
    def llm_calls(self) -> list[LLMCall]:
        """The model calls this handler call made so far (usage, cost, re-asks of each)."""
        if self._llm_calls is None:
            self._llm_calls = []
        return self._llm_calls

    async def llm(
        self,
        output: type[M],
        prompt: str | Sequence[Message],
        *,
        model: str | None = None,
        system: str | None = None,
        max_tokens: int = 512,
        temperature: float | None = 0.0,
        seed: int | None = None,
        max_reasks: int | None = None,
    ) -> M:
        """Ask a model for an ``output``, validated (:mod:`agents.llm.client`): the provider's
        native constraint where it has one, syntax-only repair, at most ``max_reasks``
        re-asks with the errors (default ``BLACKBOARD_LLM_MAX_REASKS``, 2).

        Raises:
            LLMOutputError: no valid answer (the record goes to the DLQ, stage
                ``llm_output``).
            LLMError: the call failed (retried as its ``kind`` says).
            BudgetExceededError: a budget would be passed (stage ``budget``).
        """
        value, _ = await self._model_client().generate(
            self,
            output,
            prompt,
            model=model,
            system=system,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            max_reasks=max_reasks,
        )
        return value  # type: ignore[return-value]

    async def llm_text(
        self,
        prompt: str | Sequence[Message],
        *,
        model: str | None = None,
        system: str | None = None,
        max_tokens: int = 512,
        temperature: float | None = 0.0,
        seed: int | None = None,
    ) -> str:
        """Ask a model for free text (see :meth:`llm`); ``llm_calls[-1].result`` has the
        whole normalized answer."""
        value, _ = await self._model_client().generate(
            self,
            None,
            prompt,
            model=model,
            system=system,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
        )
        return str(value)

    def _model_client(self) -> AgentLLM:
        client = self.services.llm
        if client is None:
            raise AgentError(
                f"agent {self.spec.name!r} has no model runtime (run it in a Worker, or give "
                "the runner llm=LLMRuntime(...))"
            )
        return client

    def report_tokens(self, tokens: float) -> None:
        """Count ``tokens`` (e.g. an LLM call's usage) against the agent's tokens/s limit."""
        self.tokens += tokens

    @property
    def log(self) -> Any:
        """A structlog logger bound with the agent, artifact id and correlation id."""
        if self._log is None:
            self._log = get_logger("agent").bind(
                agent=self.spec.name,
                artifact_id=self.envelope.id,
                correlation_id=self.envelope.correlation_id,
            )
        return self._log
