"""A thread for one producer's blocking calls, with a watchdog: the caller stops waiting for a
call that does not return long after its own timeout (librdkafka #5456), see
:mod:`blackboard.stores.kafka.transactions`."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import TypeVar

T = TypeVar("T")


class Wedged(Exception):
    """A librdkafka call did not return long after its own timeout."""


class CallThread:
    """A daemon thread running one producer's blocking calls one at a time, so the member can
    stop waiting for a call that never returns. A wedged thread is abandoned with its producer;
    being a daemon, it does not keep the process from exiting."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def call(self, fn: Callable[[], T], timeout: float, what: str) -> T:
        """``fn()`` on the thread, its result or exception.

        Raises:
            Wedged: ``fn`` had not returned after ``timeout`` seconds.
        """
        future: Future[T] = Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting caller
                future.set_exception(exc)

        self._jobs.put(job)
        done, _ = wait([future], timeout)
        if not done:
            raise Wedged(f"{what} did not return within {timeout:.0f}s")
        return future.result()

    def stop(self) -> None:
        """End the thread after the calls already queued."""
        self._jobs.put(None)
