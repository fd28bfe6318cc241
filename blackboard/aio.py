"""Asyncio helpers the stores and runners share."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

#: Seconds between two cancellations of a task that has not ended yet.
CANCEL_AGAIN_S = 0.5


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended (results and errors discarded).

    One cancellation is not always enough: on Python 3.11 an ``asyncio.wait_for`` whose inner
    call completes just as the cancellation lands returns the result instead of raising
    (fixed in 3.12), and client libraries await it inside their calls (redis-py writes a
    command that way), so a background loop can carry on as if nothing happened. A worker
    then hung on stop waiting for its heartbeat task. So: cancel again every
    :data:`CANCEL_AGAIN_S` until each task is done.
    """
    waiting = list(tasks)
    pending = {t for t in waiting if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_AGAIN_S)
    for task in waiting:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning
