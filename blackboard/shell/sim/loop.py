"""An asyncio event loop on virtual time: when every task waits, the clock jumps to the next
timer instead of sleeping, so an hour of simulated handlers takes as long as the code takes.

``loop.time()`` is the virtual clock: ``asyncio.sleep``, ``asyncio.timeout`` and the runner's
commit intervals (which read the loop's clock) all follow it. Nothing here waits on threads:
a simulation must not use ``asyncio.to_thread`` (its result would arrive at a real, not a
virtual, moment), which is why simulated agents have no circuit breaker (it publishes its
status from a thread).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from contextvars import Context
from typing import Any, TypeVar, TypeVarTuple

R = TypeVar("R")
Ts = TypeVarTuple("Ts")
#: Real seconds to wait when nothing is scheduled at all (only a thread could wake the loop).
_IDLE_REAL_WAIT_S = 0.05
#: The virtual clock's tick: a timer is never due sooner than this after it is set. Code that
#: waits "until a deadline" may compute a remainder of 1e-18 s, which a real clock outruns
#: while the next iteration runs; a virtual clock does not move by itself, so without a tick
#: such a loop would spin forever.
TICK_S = 1e-6


class _VirtualSelector(selectors.DefaultSelector):
    """Polls file descriptors without waiting; a wait for a timer moves the clock instead."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        super().__init__()
        self._advance = advance

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:  # no timer at all: only another thread could wake us
            result: list[tuple[selectors.SelectorKey, int]] = super().select(_IDLE_REAL_WAIT_S)
            return result
        self._advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual, starting at ``start`` seconds."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = start
        super().__init__(_VirtualSelector(self._advance))

    def _advance(self, seconds: float) -> None:
        self._virtual_now += seconds

    def time(self) -> float:
        """Virtual seconds."""
        return self._virtual_now

    def call_at(
        self,
        when: float,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: Context | None = None,
    ) -> asyncio.TimerHandle:
        """Schedule ``callback`` at ``when``, but at least one :data:`TICK_S` from now."""
        return super().call_at(
            max(when, self._virtual_now + TICK_S), callback, *args, context=context
        )


def run_virtual(main: Callable[[], Coroutine[Any, Any, R]], start: float = 0.0) -> R:
    """Run ``main()`` to completion on a fresh :class:`VirtualTimeLoop`."""
    loop = VirtualTimeLoop(start)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class LoopClock:
    """An :class:`agents.clock.Clock` reading the running loop's (virtual) time, plus an epoch
    offset, for join timeouts and batch windows."""

    def __init__(self, loop: asyncio.AbstractEventLoop, epoch: float = 1_700_000_000.0) -> None:
        self._loop = loop
        self._epoch = epoch

    def time(self) -> float:
        """Seconds since the epoch, in virtual time."""
        return self._epoch + self._loop.time()
