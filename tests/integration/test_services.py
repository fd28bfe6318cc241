"""The real servers behave as the stores rely on: Kafka transactions and Redis streams.

These tests check the test infrastructure itself (``tests/services.py`` and the launchers in
``compose/``) against the semantics docs/DESIGN.md section 3 builds on: a ``read_committed``
consumer sees a transaction's records all at once and only after the commit, data survives
a crash of the server, and Redis streams round-trip through a consumer group.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeAlias

import pytest
import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

# confluent_kafka.admin re-exports NewTopic without __all__, which mypy --strict rejects.
from confluent_kafka.cimpl import NewTopic

from compose.kafka_local import KafkaLocal
from compose.redis_local import RedisLocal
from tests.services import unique_name

TIMEOUT = 15.0  # seconds; every wait below polls for a condition with this deadline

_ConsumerFactory: TypeAlias = Callable[..., Consumer]
_ProducerFactory: TypeAlias = Callable[[str], Producer]


# -- Kafka helpers ---------------------------------------------------------------------------


def _create_topic(bootstrap: str, partitions: int = 1) -> str:
    topic = unique_name("it")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
    )
    futures[topic].result(timeout=TIMEOUT)
    return topic


@pytest.fixture
def txn_producer() -> Iterator[_ProducerFactory]:
    """Build initialised transactional producers (fresh transactional.id); closed after the test."""
    made: list[Producer] = []

    def make(bootstrap: str) -> Producer:
        producer = Producer(
            {"bootstrap.servers": bootstrap, "transactional.id": unique_name("txn"), "linger.ms": 0}
        )
        made.append(producer)
        producer.init_transactions(TIMEOUT)
        return producer

    yield make
    for producer in made:
        producer.close()


@pytest.fixture
def consumer_factory(kafka_bootstrap: str) -> Iterator[_ConsumerFactory]:
    """Build assigned consumers on partition 0 of a topic; all are closed after the test."""
    made: list[Consumer] = []

    def make(topic: str, isolation: str = "read_committed") -> Consumer:
        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": unique_name("grp"),
                "isolation.level": isolation,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
            }
        )
        # assign() instead of subscribe(): no group rebalance to wait for.
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.close()


def _poll_values(consumer: Consumer, want: int, timeout: float = TIMEOUT) -> list[bytes]:
    """Poll until ``want`` records arrived or ``timeout`` passed; return their values."""
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(values) < want and time.monotonic() < deadline:
        msg: Message | None = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            raise KafkaException(msg.error())
        values.append(msg.value() or b"")
    return values


def _drain(consumer: Consumer, seconds: float) -> list[bytes]:
    """Poll for ``seconds`` and return whatever arrived (expected: nothing)."""
    return _poll_values(consumer, want=1_000_000, timeout=seconds)


def _high_watermark(consumer: Consumer, topic: str) -> int:
    # A query (not the cache) answers for the consumer's isolation level: the high
    # watermark for read_uncommitted, the last stable offset for read_committed.
    _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=TIMEOUT)
    return int(high)


# -- Kafka -----------------------------------------------------------------------------------


@pytest.mark.kafka
def test_committed_transaction_is_seen_exactly(
    kafka_bootstrap: str, txn_producer: _ProducerFactory, consumer_factory: _ConsumerFactory
) -> None:
    topic = _create_topic(kafka_bootstrap)
    producer = txn_producer(kafka_bootstrap)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, key=b"k", value=f"r{i}".encode())
    producer.commit_transaction(TIMEOUT)

    consumer = consumer_factory(topic)
    assert _poll_values(consumer, want=3) == [b"r0", b"r1", b"r2"]
    assert _drain(consumer, 0.5) == []  # the commit marker is not a record
    # 3 records + 1 commit marker, all stable.
    assert _high_watermark(consumer, topic) == 4


@pytest.mark.kafka
def test_open_transaction_is_hidden_until_commit(
    kafka_bootstrap: str, txn_producer: _ProducerFactory, consumer_factory: _ConsumerFactory
) -> None:
    topic = _create_topic(kafka_bootstrap)
    producer = txn_producer(kafka_bootstrap)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, value=f"o{i}".encode())
    assert producer.flush(TIMEOUT) == 0  # in the log, transaction still open

    committed = consumer_factory(topic, "read_committed")
    uncommitted = consumer_factory(topic, "read_uncommitted")
    assert _high_watermark(uncommitted, topic) == 3  # high watermark moved past the records
    assert _high_watermark(committed, topic) == 0  # last stable offset did not
    assert _poll_values(uncommitted, want=3) == [b"o0", b"o1", b"o2"]
    assert _drain(committed, 1.0) == []
    # Nothing consumed yet: no position (OFFSET_INVALID), not an offset past the records.
    assert committed.position([TopicPartition(topic, 0)])[0].offset == OFFSET_INVALID

    producer.commit_transaction(TIMEOUT)
    assert _poll_values(committed, want=3) == [b"o0", b"o1", b"o2"]
    assert _high_watermark(committed, topic) == 4


@pytest.mark.kafka
def test_committed_data_survives_broker_crash(
    kafka_local: KafkaLocal, txn_producer: _ProducerFactory, consumer_factory: _ConsumerFactory
) -> None:
    bootstrap = kafka_local.bootstrap
    topic = _create_topic(bootstrap)
    producer = txn_producer(bootstrap)
    producer.begin_transaction()
    producer.produce(topic, value=b"durable")
    producer.commit_transaction(TIMEOUT)
    # commit_transaction() returns once the coordinator logged the commit; the markers that
    # make it visible follow. Kafka (4.3, single combined node) skips markers still pending
    # at a crash while the restarted node is fenced, leaving the transaction hanging, so
    # this test crashes the broker only after the commit is visible.
    before = consumer_factory(topic)
    assert _poll_values(before, want=1) == [b"durable"]
    before.close()  # no client left retrying against the dead broker
    producer.close()

    assert kafka_local.kill()
    assert not kafka_local.is_running()
    kafka_local.restart()
    assert kafka_local.bootstrap == bootstrap  # same port, same data dir

    assert _poll_values(consumer_factory(topic), want=1) == [b"durable"]


# -- Redis -----------------------------------------------------------------------------------


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the session Redis server."""
    client = redis.Redis.from_url(redis_url, socket_timeout=TIMEOUT)
    yield client
    client.close()


def _stream_entries(reply: object, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Return one stream's ``(id, fields)`` from an XREAD(GROUP) reply, RESP2 or RESP3 shaped."""
    if isinstance(reply, dict):  # RESP3: {stream: [entries]}
        by_stream = {bytes(k): v for k, v in reply.items()}
    else:  # RESP2: [[stream, entries], ...]
        assert isinstance(reply, list)
        by_stream = {bytes(k): v for k, v in reply}
    entries = by_stream[stream.encode()]
    if entries and isinstance(entries[0], list) and isinstance(entries[0][0], list):
        entries = entries[0]  # some RESP3 replies nest once more
    return [(bytes(entry_id), dict(fields)) for entry_id, fields in entries]


@pytest.mark.redis
def test_redis_ping(redis_client: redis.Redis) -> None:
    assert redis_client.ping() is True


@pytest.mark.redis
def test_redis_stream_consumer_group_round_trip(redis_client: redis.Redis) -> None:
    stream, group = unique_name("stream"), unique_name("grp")
    ids = [redis_client.xadd(stream, {"n": str(i)}) for i in range(3)]
    redis_client.xgroup_create(stream, group, id="0")

    read = _stream_entries(
        redis_client.xreadgroup(group, "c1", {stream: ">"}, count=10, block=1000), stream
    )
    assert [entry_id for entry_id, _ in read] == ids
    assert [fields[b"n"] for _, fields in read] == [b"0", b"1", b"2"]
    assert redis_client.xpending(stream, group)["pending"] == 3

    assert redis_client.xack(stream, group, *ids) == 3
    assert redis_client.xpending(stream, group)["pending"] == 0


@pytest.mark.redis
def test_redis_aof_survives_server_crash(redis_local: RedisLocal) -> None:
    stream = unique_name("stream")
    client = redis.Redis.from_url(redis_local.url, socket_timeout=TIMEOUT)
    client.xadd(stream, {"n": "1"})
    client.close()

    assert redis_local.kill()
    redis_local.restart()

    client = redis.Redis.from_url(redis_local.url, socket_timeout=TIMEOUT)
    assert client.xlen(stream) == 1
    client.close()
