"""The wall clock the runtime reads for join timeouts and batch windows; tests inject
:class:`ManualClock` and move time on instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Seconds since the epoch."""

    def time(self) -> float:
        """Now."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        """``time.time()``."""
        return time.time()


class ManualClock:
    """A clock that moves only when told to.

    Args:
        start: its first reading (seconds since the epoch).
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def time(self) -> float:
        """The current reading."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on."""
        self._now += seconds


SYSTEM_CLOCK = SystemClock()
