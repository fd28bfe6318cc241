"""Kafka-only behaviour of the store on a real broker (the shared behaviour is in
``tests/contract``)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from agents.agent import App
from agents.context import Context
from agents.worker import Worker
from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.stores.kafka.member import KafkaMember
from tests.contract.helpers import eventually
from tests.contract.test_processing import FAST, _results
from tests.contract.types import Result, Task, registry

pytestmark = pytest.mark.kafka


async def test_a_transactional_id_prefix_names_every_slots_producer(kafka_bootstrap: str) -> None:
    url = f"kafka://{kafka_bootstrap}?transactional.id.prefix=acl-team."
    prefix = f"t{uuid.uuid4().hex[:10]}"
    board = Blackboard(
        url,
        registry=registry,
        settings=BlackboardSettings(url=url, prefix=prefix, partitions=2),
    )
    app = App("test", registry=registry)

    async def double(task: Task, ctx: Context) -> Result:
        return Result(n=task.n * 2)

    app.add(double, consumes=Task, publishes=Result, name="doubler")
    worker = Worker(app, board, FAST, slot="7")
    running = asyncio.create_task(worker.run())
    try:
        await worker.started()
        member = worker.runners[0]._member
        assert isinstance(member, KafkaMember)
        assert member.transactional_id == f"acl-team.{prefix}.doubler.7"
        board.publish_many([Task(n=i) for i in range(20)])
        await eventually(
            lambda: sorted(r.n for r in _results(board)) == [2 * i for i in range(20)],
            what="20 results committed through the prefixed producer",
        )
    finally:
        worker.stop()
        await running
        board.close()


async def test_a_bad_record_from_a_plain_kafka_producer_reaches_the_dlq_intact(
    kafka_bootstrap: str,
) -> None:
    from confluent_kafka import Producer

    from blackboard.deadletters import DeadLetters

    url = f"kafka://{kafka_bootstrap}"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    board = Blackboard(
        url, registry=registry, settings=BlackboardSettings(url=url, prefix=prefix, partitions=2)
    )
    app = App("test", registry=registry)

    async def double(task: Task, ctx: Context) -> Result:
        return Result(n=task.n * 2)

    app.add(double, consumes=Task, publishes=Result, name="doubler")
    worker = Worker(app, board, FAST)
    running = asyncio.create_task(worker.run())
    try:
        await worker.started()
        topic = board.topic(Task)
        plain = Producer({"bootstrap.servers": kafka_bootstrap})
        sent = [
            (b"k-1", b"\x00\xffnot json", [("bb.id", b"plain-1"), ("bb.type", b"test.Task")]),
            (b"k-2", b'{"n": "not a number"}', [("bb.id", b"plain-2"), ("bb.type", b"test.Task")]),
            (None, b'{"n": 1}', None),  # no envelope headers at all
        ]
        for key, value, headers in sent:
            plain.produce(topic, value, key, partition=0, headers=headers)
        assert plain.flush(10) == 0
        dlq = DeadLetters(board)
        await eventually(lambda: len(dlq.entries()) == 3, what="3 dead letters")
    finally:
        worker.stop()
        await running
    entries = sorted(dlq.entries(), key=lambda e: e.offset)
    for entry, (key, value, headers) in zip(entries, sent, strict=True):
        assert entry.record.key == key and entry.record.value == value
        original = [(k, v) for k, v in entry.record.headers if not k.startswith("bb.dlq.")]
        assert original == (headers or [])
        assert entry.header("bb.dlq.original.topic") == topic
    assert [e.stage for e in entries] == ["deserialize", "validate", "deserialize"]
    board.close()


def test_a_publish_whose_delivery_is_unknown_says_so_with_the_ids(kafka_bootstrap: str) -> None:
    """Records the broker keeps refusing retriably until message.timeout.ms runs out (here:
    their topic was deleted after the producer learned it; UNKNOWN_TOPIC_OR_PART is retriable)
    have an unknown outcome as far as the producer knows: the error says so and names their
    ids, instead of "not delivered" (a caller that retried with new ids duplicated inputs)."""
    from confluent_kafka.admin import AdminClient

    from blackboard.errors import DeliveryUnknownError

    url = f"kafka://{kafka_bootstrap}?producer.message.timeout.ms=1500"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    board = Blackboard(
        url, registry=registry, settings=BlackboardSettings(url=url, prefix=prefix, partitions=2)
    )
    try:
        board.publish(Task(n=0))  # the producer and the store know the topic now
        topic = board.topic(Task)
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.delete_topics([topic])[topic].result()
        with pytest.raises(DeliveryUnknownError, match="may or may not be written") as caught:
            board.publish_many([Task(n=i) for i in range(3)], artifact_ids=["a", "b", "c"])
        assert caught.value.artifact_ids == ("a", "b", "c")
        assert caught.value.retriable
    finally:
        board.close()
