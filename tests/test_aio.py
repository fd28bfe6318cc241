"""cancel_and_wait ends tasks that survive a cancellation."""

from __future__ import annotations

import asyncio

from blackboard.aio import cancel_and_wait


async def _swallows_first_cancel(log: list[str]) -> None:
    """Carries on after the first cancellation, as a Python 3.11 ``wait_for`` whose inner call
    completed as the cancellation landed does."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        log.append("swallowed")
    await asyncio.Event().wait()  # until cancelled again


async def _fails() -> None:
    raise RuntimeError("boom")


async def test_a_task_that_swallows_one_cancellation_still_ends() -> None:
    log: list[str] = []
    stubborn = asyncio.create_task(_swallows_first_cancel(log))
    plain = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait([stubborn, plain])
    assert log == ["swallowed"]
    assert stubborn.cancelled() and plain.cancelled()


async def test_finished_and_failed_tasks_are_left_as_they_ended() -> None:
    failed = asyncio.create_task(_fails())
    done = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    await cancel_and_wait([failed, done])
    assert isinstance(failed.exception(), RuntimeError) and done.result() is None
