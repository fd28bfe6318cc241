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
from blackboard.stores.kafka_member import KafkaMember
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
