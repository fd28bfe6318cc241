"""Kafka errors become ours with the librdkafka code kept (real ``KafkaError`` objects, as the
client raises them; the broker-level behaviour is covered by the contract and fault suites)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from blackboard.errors import (
    CommitError,
    FencedError,
    RecordTooLargeError,
    StoreError,
    StoreUnavailableError,
    TopicError,
)
from blackboard.stores.kafka.errors import superseded_by, translate


def _exc(code: int, *, fatal: bool = False, retriable: bool = False) -> KafkaException:
    return KafkaException(KafkaError(code, "from the test", fatal=fatal, retriable=retriable))


@pytest.mark.parametrize(
    ("code", "superseded"),
    [
        (KafkaError._FENCED, True),
        (KafkaError.PRODUCER_FENCED, True),
        (KafkaError.INVALID_PRODUCER_EPOCH, True),
        (KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, False),
        (KafkaError.UNKNOWN_PRODUCER_ID, False),
    ],
)
def test_only_fencing_means_another_process_took_the_slot(code: int, superseded: bool) -> None:
    err = KafkaError(code, fatal=True)
    assert superseded_by(err) is superseded


def test_fenced_commit_is_a_fenced_error_with_the_code() -> None:
    error = translate(_exc(KafkaError.PRODUCER_FENCED, fatal=True), "commit", in_commit=True)
    assert type(error) is FencedError
    assert error.code == "PRODUCER_FENCED"
    assert "commit failed: PRODUCER_FENCED" in str(error)


def test_group_generation_change_in_a_commit_is_a_retriable_fence() -> None:
    error = translate(_exc(KafkaError.ILLEGAL_GENERATION), "send_offsets", in_commit=True)
    assert isinstance(error, FencedError)
    assert error.retriable


def test_other_commit_failures_keep_librdkafkas_retriable_flag() -> None:
    error = translate(_exc(KafkaError._TIMED_OUT, retriable=True), "commit", in_commit=True)
    assert type(error) is CommitError
    assert error.retriable and error.code == "_TIMED_OUT"


@pytest.mark.parametrize(
    ("code", "kind", "retriable"),
    [
        (KafkaError._TRANSPORT, StoreUnavailableError, True),
        (KafkaError.COORDINATOR_LOAD_IN_PROGRESS, StoreUnavailableError, True),
        (KafkaError.MSG_SIZE_TOO_LARGE, RecordTooLargeError, False),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, TopicError, False),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, StoreError, False),
    ],
)
def test_outside_commits_errors_map_by_code(
    code: int, kind: type[StoreError], retriable: bool
) -> None:
    error = translate(_exc(code), "list_offsets")
    assert type(error) is kind
    assert error.retriable is retriable
    assert error.code == KafkaError(code).name()
