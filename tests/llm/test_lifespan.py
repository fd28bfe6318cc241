"""Per-worker resources: the app's lifespan is entered before agents start and left after they
stop; handlers reach what it yielded through ``ctx.resources``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from agents.agent import App
from agents.context import Context
from blackboard.artifacts import TypeRegistry, artifact
from blackboard.errors import ConfigError
from blackboard.shell.testing import TestBoard

reg = TypeRegistry()


@artifact("life.In", registry=reg)
class In(BaseModel):
    n: int


@artifact("life.Out", registry=reg)
class Out(BaseModel):
    text: str


async def test_handlers_read_what_the_lifespan_yielded_while_it_is_open() -> None:
    events: list[str] = []

    async def lifespan(app: App) -> AsyncIterator[dict[str, object]]:
        events.append("enter")
        yield {"greeting": "hello", "pool": object()}
        events.append("exit")

    app = App(registry=reg, lifespan=lifespan)

    @app.agent(consumes=In, publishes=Out)
    async def greeter(item: In, ctx: Context) -> Out:
        events.append("handle")
        return Out(text=f"{ctx.resources['greeting']} {item.n}")

    async with TestBoard(app) as tb:
        tb.publish(In(n=1))
        await tb.run_until_idle()
        assert [a.payload.text for a in tb.artifacts(Out)] == ["hello 1"]
        assert events == ["enter", "handle"]
    assert events == ["enter", "handle", "exit"]


async def test_a_lifespan_context_manager_works_and_a_bad_one_stops_start_up() -> None:
    @contextlib.asynccontextmanager
    async def managed(app: App) -> AsyncIterator[dict[str, str]]:
        yield {"k": "v"}

    app = App(registry=reg, lifespan=managed)

    @app.agent(consumes=In, publishes=Out)
    async def reader(item: In, ctx: Context) -> Out:
        return Out(text=str(ctx.resources["k"]))

    async with TestBoard(app) as tb:
        tb.publish(In(n=1))
        await tb.run_until_idle()
        assert [a.payload.text for a in tb.artifacts(Out)] == ["v"]

    async def not_a_mapping(app: App) -> AsyncIterator[list[int]]:
        yield [1]

    bad = App(registry=reg, lifespan=not_a_mapping)
    bad.agent(consumes=In)(reader)
    with pytest.raises(ConfigError, match="must yield a mapping"):
        async with TestBoard(bad):
            pass
