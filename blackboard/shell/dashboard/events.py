"""The server-sent event stream: one ``sample`` event after each sample of the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson

from blackboard.shell.dashboard.sampler import Sampler

KEEPALIVE_S = 15.0


async def stream(sampler: Sampler) -> AsyncIterator[bytes]:
    """Yield ``event: sample`` messages (the current view first), and a comment line as a
    keep-alive when nothing was sampled for a while; ends when the client goes away or
    the server stops."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def notify() -> None:  # called from the sampling thread
        loop.call_soon_threadsafe(wake.set)

    unsubscribe = sampler.subscribe(notify)
    try:
        yield b"retry: 2000\n\n"
        while not sampler.closed:
            if sampler.ticks:
                data = orjson.dumps(sampler.event(), option=orjson.OPT_SERIALIZE_NUMPY)
                yield b"event: sample\ndata: " + data + b"\n\n"
            try:
                await asyncio.wait_for(wake.wait(), KEEPALIVE_S)
            except TimeoutError:
                yield b": keep-alive\n\n"
            wake.clear()
            if sampler.closed:
                break
    finally:
        unsubscribe()
