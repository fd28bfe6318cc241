"""Publish hooks: what happens around :meth:`Blackboard.publish_many` besides the store call.

A :class:`PublishHook` has a no-op default for each point of one publish (:class:`Publish`):
:meth:`~PublishHook.begin`, :meth:`~PublishHook.traceparent` per envelope,
:meth:`~PublishHook.before_send` (may wait: backpressure), :meth:`~PublishHook.after_send`.
The core names no hook: the layers above plug theirs in through the
``kafka_blackboard.publish_hooks`` entry points (``pyproject.toml``): backpressure
(:mod:`scheduler.throttle`) and send spans (:mod:`observability.tracing`). Each entry point is
a :data:`HookFactory`, asked once per blackboard; it returns None when its concern is off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from blackboard.errors import ConfigError

if TYPE_CHECKING:
    from blackboard.artifacts import Envelope
    from blackboard.blackboard import Blackboard
    from blackboard.records import OutgoingRecord

#: The entry-point group the default hook factories are declared in.
ENTRY_POINTS = "kafka_blackboard.publish_hooks"


@dataclass(slots=True)
class Publish:
    """One :meth:`Blackboard.publish_many` call, as its hooks see it.

    Attributes:
        board: the blackboard publishing.
        correlation_id: the one correlation id given for every payload, if any.
        envelopes: the artifacts' envelopes (filled before :meth:`PublishHook.before_send`).
        records: their wire records (likewise).
        attributes: per topic, span attributes hooks add for the send spans (backpressure).
        scratch: per hook, what it keeps between its points.
        namers: the hooks that give envelopes their ``traceparent`` in this publish (a hook
            adds itself in :meth:`PublishHook.begin`; none while tracing is off).
    """

    board: Blackboard
    correlation_id: str | None
    envelopes: list[Envelope] = field(default_factory=list)
    records: list[OutgoingRecord] = field(default_factory=list)
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    scratch: dict[object, Any] = field(default_factory=dict)
    namers: list[PublishHook] = field(default_factory=list)


class PublishHook:
    """A concern around publishing; every point is a no-op (subclass and override).

    ``order`` sorts a blackboard's hooks: lower first in :meth:`before_send` (a hook that waits
    goes before one that times the store call), last in :meth:`after_send`.
    """

    order: int = 50

    def begin(self, publish: Publish) -> None:
        """A publish starts (nothing is encoded yet)."""

    def traceparent(self, publish: Publish) -> str | None:
        """The ``traceparent`` of the next envelope (None: this hook gives none); asked only
        of the hooks in ``publish.namers``."""
        return None

    def before_send(self, publish: Publish) -> None:
        """The records are about to go to the store; may wait (backpressure).

        Raises:
            StoreClosedError: the blackboard was closed while waiting.
        """

    def after_send(self, publish: Publish, error: BaseException | None) -> None:
        """The store call returned, or raised ``error``."""

    def close(self) -> None:
        """The blackboard closes (a waiting publish should fail)."""


#: Makes a blackboard's hook for one concern (None: the concern is off for it). A factory may
#: name the class it makes as its ``makes`` attribute: one given in code then stands in for it
#: before it runs.
HookFactory = Callable[["Blackboard"], PublishHook | None]


@cache
def installed_factories() -> tuple[HookFactory, ...]:
    """The hook factories the installed packages declare (loaded once per process).

    Raises:
        ConfigError: an entry point does not load.
    """
    found: list[HookFactory] = []
    for ep in sorted(entry_points(group=ENTRY_POINTS), key=lambda e: e.name):
        try:
            found.append(ep.load())
        except Exception as exc:
            raise ConfigError(
                f"publish hook {ep.name} ({ep.value}) does not load: {type(exc).__name__}: {exc}"
            ) from None
    return tuple(found)


def make_hooks(board: Blackboard, extra: Sequence[HookFactory] = ()) -> tuple[PublishHook, ...]:
    """The hooks of ``board``: the installed ones (:func:`installed_factories`) and those
    ``extra`` makes, sorted; an extra hook stands in for an installed one of its class."""
    given = [h for h in (f(board) for f in extra) if h is not None]
    kinds = tuple({type(h) for h in given})
    installed = []
    for factory in installed_factories():
        makes = getattr(factory, "makes", None)  # the hook class it makes, if it says
        if makes is not None and any(issubclass(k, makes) for k in kinds):
            continue  # given in code: the installed one is not even made (nor its settings read)
        made = factory(board)
        if made is not None and not isinstance(made, kinds):
            installed.append(made)
    return tuple(sorted([*installed, *given], key=lambda h: h.order))
