"""Kafka errors become ours at the store boundary, keeping librdkafka's error code."""

from __future__ import annotations

from typing import Any

from blackboard.errors import (
    CommitError,
    FencedError,
    RecordTooLargeError,
    StoreError,
    StoreUnavailableError,
    TopicError,
)

_FENCED = {
    "_FENCED",
    "PRODUCER_FENCED",
    "INVALID_PRODUCER_EPOCH",
    "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
}
_GROUP_FENCED = {
    "ILLEGAL_GENERATION",
    "UNKNOWN_MEMBER_ID",
    "FENCED_INSTANCE_ID",
    "REBALANCE_IN_PROGRESS",
}
_TOO_LARGE = {"MSG_SIZE_TOO_LARGE", "OFFSET_METADATA_TOO_LARGE", "RECORD_LIST_TOO_LARGE"}
_UNAVAILABLE = {
    "_TRANSPORT",
    "_ALL_BROKERS_DOWN",
    "_TIMED_OUT",
    "_RESOLVE",
    "_NOENT",  # list_offsets: "No leaders found" while a broker restarts
    "BROKER_NOT_AVAILABLE",
    "LEADER_NOT_AVAILABLE",
    "NOT_LEADER_FOR_PARTITION",
    # Transient while a broker comes back: its partitions and coordinators move (a restarted
    # node leads, is fenced, is elected again), so cached leader epochs are behind for a
    # moment, coordinators load, and open transactions still hold group offsets.
    "FENCED_LEADER_EPOCH",
    "UNKNOWN_LEADER_EPOCH",
    "REPLICA_NOT_AVAILABLE",
    "OFFSET_NOT_AVAILABLE",
    "NOT_COORDINATOR",
    "COORDINATOR_NOT_AVAILABLE",
    "COORDINATOR_LOAD_IN_PROGRESS",
    "UNSTABLE_OFFSET_COMMIT",
    "REQUEST_TIMED_OUT",
    "NETWORK_EXCEPTION",
}
_TOPIC = {"UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION", "TOPIC_EXCEPTION"}


def kafka_error(exc: BaseException) -> Any:
    """The ``KafkaError`` inside a ``KafkaException`` (or None)."""
    args = getattr(exc, "args", ())
    return args[0] if args and hasattr(args[0], "name") else None


def superseded_by(err: Any) -> bool:
    """Whether a fatal transactional error means another process took over the slot (the
    member must stop), rather than a producer that must be replaced."""
    return bool(err.name() in _FENCED)


def translate(exc: BaseException, action: str, *, in_commit: bool = False) -> StoreError:
    """Our error for a Kafka failure during ``action`` (to raise ``from exc``)."""
    err = kafka_error(exc)
    if err is None:
        return (
            CommitError(f"{action} failed: {exc}")
            if in_commit
            else StoreError(f"{action} failed: {exc}")
        )
    code = err.name()
    message = f"{action} failed: {code}: {err.str()}"
    retriable = bool(err.retriable())
    if code in _FENCED or (in_commit and err.fatal()):
        return FencedError(message, code=code)
    if code in _GROUP_FENCED and in_commit:
        return FencedError(message, code=code, retriable=True)
    if code in _TOO_LARGE:
        return RecordTooLargeError(message, code=code)
    if in_commit:
        return CommitError(message, code=code, retriable=retriable)
    if code in _UNAVAILABLE or (retriable and code.startswith("_")):
        return StoreUnavailableError(message, code=code, retriable=True)
    if code in _TOPIC:
        return TopicError(message, code=code)
    return StoreError(message, code=code, retriable=retriable)
