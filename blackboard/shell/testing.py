"""Unit-test agents on the embedded store, no broker needed.

::

    async def test_reviewer() -> None:
        async with TestBoard(app) as tb:
            tb.publish(Idea(title="x"))
            await tb.run_until_idle()
            assert [r.payload.score for r in tb.artifacts(Review)] == [3]

``run_until_idle`` returns once every agent has committed everything there is to read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel

from agents.agent import App
from agents.llm.adapter import ModelAdapter
from agents.llm.settings import LLMSettings
from agents.settings import RunnerSettings
from agents.worker import Worker
from blackboard.artifacts import Artifact, Envelope
from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.records import Record, TopicPartition
from scheduler import throttle_hooks
from scheduler.throttle import BackpressureSettings

M = TypeVar("M", bound=BaseModel)

#: Commit at once when idle and poll briefly, so tests see results quickly.
FAST_SETTINGS = RunnerSettings(commit_interval_ms=5, idle_poll_s=0.05, shutdown_grace_s=5)


class TestBoard:
    """A blackboard on a fresh ``memory://`` store with ``app``'s agents running.

    Args:
        app: the agents to run.
        url: the store (default: a new embedded store).
        partitions: partitions per topic.
        prefix: the topic prefix (default the settings' own; a fresh one keeps a shared
            broker's earlier topics and groups out of the test).
        settings: runner settings (default :data:`FAST_SETTINGS`).
        backpressure: publish throttles on lag (default off; :mod:`scheduler.throttle`).
        llm: how model calls run (default: the defaults, not ``BLACKBOARD_LLM_*``).
        models: model string -> adapter standing in for it (``FunctionModel``, ...).
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        app: App,
        *,
        url: str = "memory://",
        partitions: int = 4,
        prefix: str | None = None,
        settings: RunnerSettings | None = None,
        backpressure: BackpressureSettings | None = None,
        llm: LLMSettings | None = None,
        models: Mapping[str, ModelAdapter] | None = None,
    ) -> None:
        board_settings = BlackboardSettings(url=url, partitions=partitions)
        if prefix is not None:
            board_settings = board_settings.model_copy(update={"prefix": prefix})
        # The installed publish hooks, but backpressure as given here (not from the shell's
        # variables: a test says what it wants).
        hooks = [throttle_hooks.backpressure(backpressure or BackpressureSettings())]
        self.board = Blackboard(url, registry=app.registry, settings=board_settings, hooks=hooks)
        self.worker = Worker(
            app,
            self.board,
            settings or FAST_SETTINGS,
            llm=llm if llm is not None else LLMSettings(),
            models=models,
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TestBoard:
        self.board.ensure_topics(self.worker.app.types())
        self._task = task = asyncio.create_task(self.worker.run())
        started = asyncio.ensure_future(self.worker.started())
        await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done() and not started.done():  # the worker failed before its agents started
            started.cancel()
            self.board.close()
            task.result()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.worker.stop()
        if self._task is not None:
            await self._task
        self.board.close()

    def publish(self, payload: BaseModel, **kwargs: Any) -> Envelope:
        """Publish an artifact from outside (see :meth:`Blackboard.publish`)."""
        return self.board.publish(payload, **kwargs)

    async def run_until_idle(self, timeout: float = 10.0) -> None:
        """Wait until every agent has read and committed everything.

        Raises:
            TimeoutError: still busy after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 3:
            if self._task is not None and self._task.done():
                self._task.result()  # surface a crashed worker
            if time.monotonic() > deadline:
                raise TimeoutError(f"agents still busy after {timeout}s")
            quiet = quiet + 1 if self.worker.idle and self.lag() == 0 else 0
            await asyncio.sleep(0.005)

    def lag(self) -> int:
        """Total lag of the app's agents."""
        groups = [self.board.topics.group(agent) for agent in self.worker.app.agents]
        return sum(row.lag for row in self.board.lag(groups))

    def artifacts(self, model: type[M]) -> list[Artifact[M]]:
        """Every committed artifact of a type, in partition then offset order."""
        return list(self.board.read(model))  # type: ignore[arg-type]

    def dead_letters(self, model: type[BaseModel]) -> list[Record]:
        """The dead letters of a type's topic."""
        topic = self.board.topics.dlq(self.board.topic(model))
        return [
            r
            for p in range(self.board.settings.partitions)
            for r in self.board.store.read(TopicPartition(topic, p), 0, 1_000_000)
        ]
