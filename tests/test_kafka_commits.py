"""What a new partition owner reads right after the previous owner's transactional commits,
on real Kafka 4.0.x and 3.9.x brokers (the corner cases KafkaMember relies on).

- ``require_stable`` committed offsets: the broker answers ``UNSTABLE_OFFSET_COMMIT`` as a
  per-partition error (not raised by confluent-kafka) while a transactional commit's markers are
  pending; ``KafkaStore.group_offsets`` must never read such a partition as "never committed".
- The state changelog: right after ``commit_transaction`` its last stable offset may still be
  below the committed records; ``read_state`` must include them.
- Lag of a group reading a transactionally written topic reaches 0 once it drained (the marker
  after the last record counts in the last stable offset).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as KafkaTP

from agents.agent import App
from agents.context import Context
from agents.worker import Worker
from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.records import CommittedOffset, TopicPartition
from blackboard.stores.kafka.store import KafkaStore
from compose.kafka_local import KAFKA_VERSION, LEGACY_KAFKA_VERSION
from tests.contract.helpers import eventually
from tests.contract.test_processing import FAST, _results, _start
from tests.contract.types import Result, Task, registry

pytestmark = pytest.mark.kafka
PARTITIONS = 4
ROUNDS = 150


@pytest.fixture(params=[KAFKA_VERSION, LEGACY_KAFKA_VERSION])
def bootstrap(request: pytest.FixtureRequest) -> str:
    """Each broker version's session broker."""
    name = "kafka_bootstrap" if request.param == KAFKA_VERSION else "kafka_legacy_bootstrap"
    return str(request.getfixturevalue(name))


@pytest.fixture
def store(bootstrap: str) -> Iterator[KafkaStore]:
    opened = KafkaStore(f"kafka://{bootstrap}")
    yield opened
    opened.close()


def _owner(bootstrap: str, topic: str, group: str) -> tuple[Consumer, Producer]:
    """A group member of ``topic`` with a transactional producer: the previous owner."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    for _ in range(100):
        consumer.poll(0.1)
        if consumer.assignment():
            break
    assert consumer.assignment(), "the owner got no partitions"
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": group, "linger.ms": 0})
    producer.init_transactions(30)
    return consumer, producer


def test_committed_offsets_right_after_transactional_commits_are_never_missing(
    store: KafkaStore, bootstrap: str
) -> None:
    topic, group = f"t{uuid.uuid4().hex[:10]}", f"g{uuid.uuid4().hex[:10]}"
    store.create_topics([topic], PARTITIONS)
    consumer, producer = _owner(bootstrap, topic, group)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    unstable_first = 0
    try:
        for n in range(1, ROUNDS + 1):
            offsets = [KafkaTP(topic, p, n * 10 + p, f"bb1:{n}") for p in range(PARTITIONS)]
            producer.begin_transaction()
            producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(30)
            # What one plain fetch says at this moment (the call the member once trusted) ...
            _, unstable = store._reads._fetch_group_offsets(group, True, tps)
            unstable_first += bool(unstable)
            # ... and what the store answers: every partition, at this commit.
            found = store.group_offsets(group, stable=True, partitions=tps)
            expected = {
                TopicPartition(topic, p): CommittedOffset(n * 10 + p, f"bb1:{n}")
                for p in range(PARTITIONS)
            }
            assert found == expected, f"round {n}: {found}"
    finally:
        consumer.close()
    # The window the fix is for was open in this run (else the test proved nothing).
    assert unstable_first > 0, "no fetch right after a commit was unstable"


def test_state_restore_right_after_a_commit_includes_it(store: KafkaStore, bootstrap: str) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}.state"
    store.create_topics([topic], PARTITIONS, compacted=True)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": topic, "linger.ms": 0})
    producer.init_transactions(30)
    behind_first = 0
    tp = TopicPartition(topic, 1)
    for n in range(1, ROUNDS + 1):
        producer.begin_transaction()
        producer.produce(topic, str(n).encode(), b"count", partition=1)
        producer.commit_transaction(30)
        stable = store.end_offsets_of([tp])[tp]  # what a restore read up to before
        behind_first += stable < 2 * n - 1  # n records and n - 1 markers before this one's
        assert store.read_state(topic, 1) == {"count": str(n).encode()}, f"round {n}"
    assert behind_first > 0, "the last stable offset was never behind right after a commit"


async def test_a_drained_group_reading_transactional_outputs_shows_lag_0(bootstrap: str) -> None:
    url = f"kafka://{bootstrap}"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    board = Blackboard(
        url, registry=registry, settings=BlackboardSettings(url=url, prefix=prefix, partitions=2)
    )

    async def double(task: Task, ctx: Context) -> Result:
        return Result(n=task.n * 2)

    seen: list[int] = []

    async def read(result: Result, ctx: Context) -> None:
        seen.append(result.n)

    app = App("test", registry=registry)
    app.add(double, consumes=Task, publishes=Result)
    app.add(read, consumes=Result)  # reads what `double` committed in transactions
    worker = Worker(app, board, FAST)
    running = await _start(worker)
    try:
        board.publish_many([Task(n=i) for i in range(40)])
        await eventually(lambda: len(seen) == 40, what="every result read")
        await eventually(
            lambda: (
                {(r.group, r.lag) for r in board.lag()}
                == {(board.topics.group("double"), 0), (board.topics.group("read"), 0)}
            ),
            timeout=15,
            what="lag 0 on every partition of both groups",
        )
        assert sorted(r.n for r in _results(board)) == [2 * i for i in range(40)]
    finally:
        worker.stop()
        await running
        board.close()
