"""Kafka settings from the store URL: every librdkafka key comes from one place."""

from __future__ import annotations

import pytest

from blackboard.errors import ConfigError, MissingDependencyError, UnknownStoreError
from blackboard.stores import open_store
from blackboard.stores.kafka.settings import KafkaSettings


def test_defaults_give_exactly_once_consumers_and_producers() -> None:
    s = KafkaSettings.from_url("kafka://h1:9092,h2:9093")
    consumer = s.consumer_config("bb.agent")
    assert consumer["bootstrap.servers"] == "h1:9092,h2:9093"
    assert consumer["isolation.level"] == "read_committed"
    assert consumer["enable.auto.commit"] is False
    assert consumer["enable.auto.offset.store"] is False
    assert consumer["partition.assignment.strategy"] == "range"  # co-partitioned joins
    txn = s.transactional_config("bb.agent.0")
    assert txn["transactional.id"] == "bb.agent.0"
    assert txn["enable.idempotence"] is True and txn["acks"] == "all"
    assert "partition.assignment.strategy" not in s.reader_config()


def test_raw_librdkafka_keys_override_defaults_per_client() -> None:
    s = KafkaSettings.from_url(
        "kafka://h:9092?compression.type=zstd&producer.linger.ms=20&consumer.fetch.wait.max.ms=10"
    )
    assert s.producer_config()["compression.type"] == "zstd"
    assert s.producer_config()["linger.ms"] == "20"
    assert s.consumer_config("g")["compression.type"] == "zstd"
    assert s.consumer_config("g")["fetch.wait.max.ms"] == "10"
    assert "fetch.wait.max.ms" not in s.producer_config()


def test_transactional_ids_are_per_group_and_slot_with_an_optional_prefix() -> None:
    plain = KafkaSettings.from_url("kafka://h:9092")
    assert plain.transactional_id("bb.agent", "3") == "bb.agent.3"
    prefixed = KafkaSettings.from_url("kafka://h:9092?transactional.id.prefix=team-a.")
    assert prefixed.transactional_id("bb.agent", "3") == "team-a.bb.agent.3"
    assert "transactional.id.prefix" not in prefixed.producer_config()  # not a librdkafka key
    txn = prefixed.transactional_config(prefixed.transactional_id("bb.agent", "3"))
    assert txn["transactional.id"] == "team-a.bb.agent.3"


@pytest.mark.parametrize(
    "key", ["transactional.id", "producer.transactional.id", "group.id", "consumer.group.id"]
)
def test_keys_the_store_sets_per_slot_or_group_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=f"{key} is set by the store"):
        KafkaSettings.from_url(f"kafka://h:9092?{key}=x")


@pytest.mark.parametrize("url", ["kafka://", "kafka://host", "kafka://host:port"])
def test_bad_urls_are_one_line_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="kafka"):
        KafkaSettings.from_url(url)


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(UnknownStoreError, match=r"memory://, kafka://, redis://"):
        open_store("mongodb://x")
    assert not issubclass(UnknownStoreError, MissingDependencyError)
