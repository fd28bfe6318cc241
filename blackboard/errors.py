"""The one exception tree of kafka-blackboard.

::

    BlackboardError
    ├── ConfigError                 bad settings; stops start-up with one line
    │   ├── UnknownStoreError       a store URL with an unknown scheme
    │   ├── MissingDependencyError  an optional package is not installed
    │   └── AppLoadError            ``module:app`` does not import or is not an App
    ├── ArtifactError
    │   ├── UnknownTypeError        a type name that is not registered
    │   ├── DuplicateTypeError      two models registered under one name and version
    │   ├── InvalidArtifactError    a payload that does not validate (keeps field errors)
    │   └── DecodeError             bytes that are not a well-formed artifact record
    ├── AgentError                  an agent defined or used wrongly
    │   ├── UnretryableError        no retry can fix it: dead-lettered at once
    │   │   ├── UndeclaredOutputError  a handler published a type it did not declare
    │   │   ├── JoinError           a record that cannot take part in its join
    │   │   ├── LLMOutputError      a model's answer never fit the declared type (stage llm_output)
    │   │   ├── BudgetExceededError a call would pass a cost or token budget (stage budget)
    │   │   └── CassetteMissError   a replayed run asked a model something never recorded
    │   ├── LLMError                a model call failed; ``kind`` says how (rate_limited, ...)
    │   │   └── LLMRequestError     the request itself is at fault: never retried
    │   └── HookError               a hook broke its contract (the call is dead-lettered)
    ├── TraceError                  traces cannot be written, found or read
    └── StoreError                  carries the backend's error code when it has one
        ├── StoreUnavailableError   the server cannot be reached
        │   └── DeliveryUnknownError  a publish whose records may or may not be written
        ├── TopicError              a topic is missing or has the wrong partition count
        ├── RecordTooLargeError     a record over the store's size limit
        ├── CommitError             an atomic commit did not happen (nothing of it is visible)
        │   └── FencedError         the member lost its partitions (group generation moved on)
        │       └── SupersededError a newer process took over this worker slot
        └── StoreClosedError        the store or member was closed

Driver errors (Kafka, Redis) are translated at the store boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class BlackboardError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(BlackboardError):
    """Settings that cannot work; reported as one line at start-up."""


class UnknownStoreError(ConfigError):
    """A store URL whose scheme no backend is registered for."""


class MissingDependencyError(ConfigError):
    """An optional dependency is not installed."""


class AppLoadError(ConfigError):
    """An application reference (``module:attribute``) that cannot be loaded."""


class ArtifactError(BlackboardError):
    """An artifact or artifact type is not what it should be."""


class UnknownTypeError(ArtifactError):
    """A type name that is not in the registry."""


class DuplicateTypeError(ArtifactError):
    """A second model registered under a name and version that is taken."""


class InvalidArtifactError(ArtifactError):
    """A payload that does not validate against its type.

    Attributes:
        type_name: the artifact type the payload was checked against.
        errors: pydantic's list of field errors.
    """

    def __init__(self, type_name: str, errors: list[dict[str, object]]) -> None:
        self.type_name = type_name
        self.errors = errors
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or '<root>'}: {e.get('msg')}"  # type: ignore[attr-defined]
            for e in errors
        )
        super().__init__(f"invalid {type_name} artifact: {fields}")


class DecodeError(ArtifactError):
    """Bytes or headers that do not form an artifact record."""


class AgentError(BlackboardError):
    """An agent was defined or used wrongly."""


class UnretryableError(AgentError):
    """A failure no retry can fix: the record is dead-lettered at once."""


class UndeclaredOutputError(UnretryableError):
    """A handler published an artifact type missing from its ``publishes`` list."""


class JoinError(UnretryableError):
    """A record cannot take part in its join: an extra part (``extras="dead_letter"``) or a
    join key on another partition than the record (the topics are not co-partitioned by it)."""


class LLMOutputError(UnretryableError):
    """A model's answer did not validate as the declared type after every re-ask, or was cut
    off (``finish_reason=length``): dead-lettered at stage ``llm_output`` with the raw text and
    the validation errors.

    Attributes:
        raw: the last answer's text.
        errors: the validation errors of the last answer, one line each.
        truncated: the last answer hit the token limit.
    """

    dlq_stage = "llm_output"

    def __init__(
        self, message: str, *, raw: str = "", errors: tuple[str, ...] = (), truncated: bool = False
    ) -> None:
        super().__init__(message)
        self.raw = raw
        self.errors = errors
        self.truncated = truncated


class BudgetExceededError(UnretryableError):
    """A model call would pass a cost or token budget (per agent, tenant or correlation id):
    dead-lettered at stage ``budget``."""

    dlq_stage = "budget"


class CassetteMissError(UnretryableError):
    """Replay mode found no recorded answer for a model request (replay fails closed)."""


class LLMError(AgentError):
    """A model call failed. Retried like any handler error, except as ``kind`` says.

    Attributes:
        kind: ``rate_limited``, ``quota_exhausted``, ``overloaded``, ``context_window``,
            ``invalid_request``, ``auth``, ``timeout`` or ``server``.
        retry_after_s: how long the provider asked to wait (rate_limited, overloaded).
        status: the HTTP status, when there was one.
        request_id: the provider's id of the request, when it gave one.
        provider: who answered (``openai``, ``anthropic``, ``local``, ...).
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        retry_after_s: float | None = None,
        status: int | None = None,
        request_id: str | None = None,
        provider: str = "",
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after_s = retry_after_s
        self.status = status
        self.request_id = request_id
        self.provider = provider


class LLMRequestError(LLMError):
    """The request is at fault (``invalid_request``, ``auth``, ``context_window``): no retry
    can fix it, so its record is dead-lettered at once (``retryable`` is False)."""

    retryable = False


class HookError(AgentError):
    """A hook broke its contract, e.g. refused a call that is still current (nothing would
    ever read its record again): the call fails for good and is dead-lettered."""


class TraceError(BlackboardError):
    """Tracing cannot start, or a run's traces cannot be found, merged or queried."""


class StoreError(BlackboardError):
    """A store operation failed.

    Attributes:
        code: the backend's own error code or name, when it has one.
        retriable: the same call may succeed if made again.
    """

    def __init__(self, message: str, *, code: str | None = None, retriable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable


class StoreUnavailableError(StoreError):
    """The store's server cannot be reached."""


class DeliveryUnknownError(StoreUnavailableError):
    """Some records of a publish were neither confirmed nor refused in time: each may or may
    not be on the blackboard. Publishing them again may add a second copy of each; publish
    them with the same artifact ids (``artifact_ids=`` / ``artifact_id=``) so consumers that
    dedupe on ids see one.

    Attributes:
        unconfirmed: indexes (in the call's order) of the records whose outcome is unknown.
        artifact_ids: their artifact ids, when the publish came through a Blackboard.
    """

    def __init__(self, message: str, *, unconfirmed: tuple[int, ...], code: str | None = None):
        super().__init__(message, code=code, retriable=True)
        self.unconfirmed = unconfirmed
        self.artifact_ids: tuple[str, ...] = ()


class TopicError(StoreError):
    """A topic is missing or does not have the blackboard's partition count."""


class RecordTooLargeError(StoreError):
    """A record is larger than the store accepts."""


class CommitError(StoreError):
    """An atomic commit failed; none of its outputs, offsets or state became visible."""


class FencedError(CommitError):
    """The member no longer owns the partitions it tried to commit."""


class SupersededError(FencedError):
    """A newer process took over this worker slot (its transactional id); stop."""


class StoreClosedError(StoreError):
    """The store or group member was used after ``close()``."""
