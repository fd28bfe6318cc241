"""Where backpressure (:mod:`scheduler.throttle`) acts: the publish hook of a blackboard's
external publishes, and the rate limiter of an agent runner's outputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from blackboard.publishing import HookFactory, Publish, PublishHook
from scheduler.ratelimit import Limiter
from scheduler.throttle import Backpressure, BackpressureSettings

if TYPE_CHECKING:
    from blackboard.blackboard import Blackboard


class ThrottledLimiter:
    """An agent runner's rate limiter with its backpressure (a :class:`Limiter`): a handler
    starts only when its own limits (in memory or shared in Redis) allow it and every type it
    publishes may take one more record (an agent's handler publishes about one output per type
    per record)."""

    def __init__(
        self, inner: Limiter | None, backpressure: Backpressure, topics: Iterable[str]
    ) -> None:
        self.inner = inner
        self.backpressure = backpressure
        self._counts = dict.fromkeys(sorted(topics), 1)

    def wait_s(self, now: float) -> float:
        """Seconds until the next call may start: own limits and backpressure."""
        own = self.inner.wait_s(now) if self.inner is not None else 0.0
        return max(own, self.backpressure.wait_s(self._counts, now))

    def started(self, now: float) -> None:
        """A call started: spend a request token and one record of every published type."""
        if self.inner is not None:
            self.inner.started(now)
        self.backpressure.take(self._counts, now)

    def used_tokens(self, now: float, tokens: float) -> None:
        """A call reported ``tokens``: the agent's own tokens/s limit counts them."""
        if self.inner is not None:
            self.inner.used_tokens(now, tokens)

    def hold(self, now: float, seconds: float) -> None:
        """Hold the agent's own limiter (backpressure goes on as it was)."""
        if self.inner is not None:
            self.inner.hold(now, seconds)

    async def open(self) -> None:
        """Open the agent's own limiter (a shared one connects to Redis)."""
        if self.inner is not None:
            await self.inner.open()

    async def close(self) -> None:
        """Close the agent's own limiter."""
        if self.inner is not None:
            await self.inner.close()


class BackpressureHook(PublishHook):
    """The publish hook of a blackboard's external publishes: each waits while the consumers
    of its target types are behind, and its send spans carry each topic's state. Made with
    settings that are off, it does nothing (and stands in for the installed one: an explicit
    "off" wins over the environment)."""

    order = 10  # waits before the send spans time the store call

    def __init__(self, settings: BackpressureSettings, backpressure: Backpressure | None) -> None:
        self.settings = settings
        """The settings it throttles with (agents' runners on the board use the same)."""
        self.backpressure = backpressure
        """None while the settings are off."""

    def before_send(self, publish: Publish) -> None:
        if self.backpressure is None:
            return
        counts = Counter(r.topic for r in publish.records)
        for topic, throttle in self.backpressure.acquire(counts).items():
            publish.attributes.setdefault(topic, {}).update(throttle.attributes())

    def close(self) -> None:
        if self.backpressure is not None:
            self.backpressure.close()


def backpressure(settings: BackpressureSettings) -> HookFactory:
    """The maker of a blackboard's backpressure hook with ``settings``:
    ``Blackboard(..., hooks=[backpressure(settings)])`` (in place of the installed one, which
    reads the environment)."""

    def make(board: Blackboard) -> PublishHook:
        if not settings.enabled:
            return BackpressureHook(settings, None)
        return BackpressureHook(
            settings, Backpressure(board.store, settings, group_prefix=board.topics.prefix + ".")
        )

    make.makes = BackpressureHook  # type: ignore[attr-defined]
    return make


def publish_hook(board: Blackboard) -> PublishHook | None:
    """Backpressure from the ``BLACKBOARD_BACKPRESSURE*`` variables (entry point
    ``kafka_blackboard.publish_hooks``), for a blackboard whose own settings came from the
    environment too (settings built in code do not change with the shell); None while off.

    Raises:
        ConfigError: a variable is invalid.
    """
    if not board.settings_from_env:
        return None
    settings = BackpressureSettings.from_env()
    return backpressure(settings)(board) if settings.enabled else None


publish_hook.makes = BackpressureHook  # type: ignore[attr-defined]


def agent_limiter(
    board: Blackboard,
    group: str,
    publishes: Iterable[str],
    inner: Limiter | None,
    on_change: Callable[[], None],
) -> ThrottledLimiter | None:
    """The rate limiter of an agent runner with backpressure on the topics of the types it
    publishes, with the settings of the board's own backpressure (None when the board has none
    or the agent publishes nothing).

    Lag is read inline on the embedded store (an in-process computation) and on a thread on
    the others (a network call must not block the event loop).
    """
    hook = board.hook(BackpressureHook)
    topics = sorted({board.topics.for_type(name) for name in publishes})
    if hook is None or hook.backpressure is None or not topics:
        return None
    settings = hook.settings
    backpressure = Backpressure(
        board.store,
        settings,
        group_prefix=board.topics.prefix + ".",
        exclude_groups=(group,),
        background=not board.store.embedded,
        on_change=on_change,
    )
    return ThrottledLimiter(inner, backpressure, topics)
