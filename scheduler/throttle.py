"""Publish throttles that read lag: publishers slow down while the consumers of their target
types are behind.

One :class:`Backpressure` per publisher (a :class:`~blackboard.blackboard.Blackboard` for
external publishes, one per agent runner for outputs) keeps a :class:`TopicThrottle` per target
topic. At most every ``sample_interval_s`` it reads ``Store.lag()`` once (a publish in between
only checks a token bucket), and for each target topic:

1. for every consumer group with lag rows on the topic (the blackboard's groups: those that
   committed on it or subscribe to it), the lag summed over partitions and the drain rate,
   measured as the committed-offset delta per second over the last few samples;
2. the expected wait of a record published now, by Little's law (lag / drain rate), of the
   slowest group; a group seen once has no drain rate yet and is not judged;
3. :class:`~scheduler.backpressure.AimdController` against ``target_wait_s``: multiplicative
   decrease over the target, additive increase under it; below ``min_rate`` the topic is
   *paused* (publishes wait for the next sample), under ``max_rate`` *throttled*, else
   *normal*;
4. a token bucket at the AIMD rate gates publishes (``burst_s`` seconds' worth banked).

A group that stopped for good still counts (drain 0: the publisher pauses): that is the
point of backpressure, and ``blackboard lag`` shows the group as STOP. An operator who retires
an agent names it in ``ignore_agents`` (``BLACKBOARD_BACKPRESSURE_IGNORE_AGENTS=a,b``): the
lag of its group (``<prefix>.<agent>``) then never throttles anyone. There is no automatic
rule ("offsets still and no members for N s"): the Kafka store cannot tell a group's members
without an admin round trip per group per sample, and a rule that held on some stores only
would make the backends behave differently.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from blackboard.envsettings import EnvSettings
from blackboard.errors import StoreClosedError
from blackboard.logs import get_logger
from scheduler.backpressure import AimdController, Throttle, expected_wait_s, rate
from scheduler.ratelimit import TokenBucket

if TYPE_CHECKING:
    from blackboard.store import LagRow, Store

log = get_logger("backpressure")

DRAIN_SAMPLES = 4  # drain rate = committed delta over the last 4 samples (3 intervals)
REPORT_EVERY = 5  # while not normal, re-report the state every 5 sample intervals

AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # as agents.agent checks names


class BackpressureSettings(EnvSettings):
    """How publishers throttle on their consumers' lag (off by default).

    :meth:`from_env` reads ``BLACKBOARD_BACKPRESSURE`` (``1`` / ``true`` turns it on) and
    ``BLACKBOARD_BACKPRESSURE_<FIELD>``; explicit values win (:mod:`blackboard.envsettings`).
    """

    model_config = SettingsConfigDict(env_prefix="BLACKBOARD_BACKPRESSURE_")
    what = "backpressure setting"

    enabled: bool = Field(
        default=False,
        validation_alias="BLACKBOARD_BACKPRESSURE",
        description="throttle publishes on their consumers' lag at all",
    )
    target_wait_s: float = Field(
        default=30.0,
        gt=0,
        description="expected wait (lag / drain rate) above which the rate decreases",
    )
    max_rate: float = Field(
        default=10_000.0, gt=0, description="records/s per target type when nobody is behind"
    )
    min_rate: float = Field(
        default=1.0, gt=0, description="below this rate a publisher pauses until the wait falls"
    )
    increase: float | None = Field(
        default=None,
        gt=0,
        description="records/s added per sample under the target (unset: `max_rate / 10`)",
    )
    decrease: float = Field(
        default=0.5, gt=0, lt=1, description="factor applied per sample over the target"
    )
    sample_interval_s: float = Field(
        default=1.0, gt=0, description="how often lag is read (a publish never reads it)"
    )
    burst_s: float = Field(
        default=1.0, gt=0, description="seconds' worth of the rate a publisher may spend at once"
    )
    ignore_agents: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="agents whose groups' lag never throttles a publisher (e.g. retired ones): "
        "agent names, not group names, so one list serves every prefix",
    )

    @field_validator("ignore_agents", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(","))
        return value

    @field_validator("ignore_agents")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not AGENT_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an agent name ({AGENT_NAME.pattern})")
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _rates(self) -> BackpressureSettings:
        if self.min_rate > self.max_rate:
            raise ValueError(f"min_rate {self.min_rate:g} is above max_rate {self.max_rate:g}")
        return self

    def controller(self) -> AimdController:
        """A fresh AIMD controller with these settings."""
        return AimdController(
            target_wait_s=self.target_wait_s,
            max_rate=self.max_rate,
            min_rate=self.min_rate,
            increase=self.increase if self.increase is not None else self.max_rate / 10,
            decrease=self.decrease,
        )


@dataclass(slots=True)
class TopicThrottle:
    """The throttle of one target topic: its controller, bucket and last measurement."""

    topic: str
    controller: AimdController
    bucket: TokenBucket
    lag: int = 0
    drain_per_s: float | None = None
    expected_wait_s: float | None = None
    group: str | None = None  # the slowest consumer group at the last sample

    @property
    def state(self) -> Throttle:
        """normal / throttled / paused."""
        return self.controller.state

    @property
    def rate(self) -> float:
        """Records/s allowed now (0 while paused)."""
        c = self.controller
        return c.rate if c.rate >= c.min_rate else 0.0

    def attributes(self) -> dict[str, Any]:
        """Span attributes (``bb.throttle.*``) and the status report's figures."""
        wait = self.expected_wait_s
        return {
            "bb.throttle.state": self.state,
            "bb.throttle.rate": round(self.rate, 3),
            "bb.throttle.lag": self.lag,
            "bb.throttle.expected_wait_s": None if wait is None or math.isinf(wait) else wait,
        }


@dataclass(slots=True)
class _Measure:
    lag: int = 0
    window: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=DRAIN_SAMPLES))


class Backpressure:
    """Throttles of one publisher, one per target topic, fed by one lag sample per interval.

    Thread-safe (publishes may come from several threads).

    Args:
        store: where lag is read.
        settings: the controller's settings (``enabled`` is the caller's business).
        group_prefix: only groups whose name starts with it count (the blackboard's).
        exclude_groups: groups that never count (an agent's own group); the groups of
            ``settings.ignore_agents`` (``group_prefix`` + name) are added.
        clock: the time source of sample intervals and buckets when callers give no ``now``.
        background: read lag on a thread, applied on the next call after it returns (for an
            event loop, which must not block on a store call); else inline.
        on_change: called (in the caller's thread, outside the lock) when a topic's state
            changes, and every few intervals while one is not normal.
    """

    def __init__(
        self,
        store: Store,
        settings: BackpressureSettings,
        *,
        group_prefix: str = "",
        exclude_groups: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        background: bool = False,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self._prefix = group_prefix
        ignored = {group_prefix + name for name in settings.ignore_agents}
        self._exclude = frozenset(exclude_groups) | ignored
        self._background = background
        self._on_change = on_change
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._throttles: dict[str, TopicThrottle] = {}
        self._measures: dict[tuple[str, str], _Measure] = {}
        self._next_sample = -math.inf
        self._last_report = -math.inf
        self._sampling = False
        self._fetched: list[LagRow] | None = None
        self._reported: tuple[tuple[str, Throttle], ...] = ()

    # -- throttles ------------------------------------------------------------------------
    def throttle(self, topic: str) -> TopicThrottle:
        """The throttle of ``topic`` (created on first use, normal)."""
        found = self._throttles.get(topic)
        if found is None:
            s = self.settings
            found = self._throttles[topic] = TopicThrottle(
                topic, s.controller(), TokenBucket(s.max_rate, max(1.0, s.max_rate * s.burst_s))
            )
        return found

    def throttles(self) -> list[TopicThrottle]:
        """Every topic's throttle, by topic."""
        with self._lock:
            return [self._throttles[t] for t in sorted(self._throttles)]

    # -- gating ---------------------------------------------------------------------------
    def wait_s(self, counts: Mapping[str, int], now: float | None = None) -> float:
        """Seconds until ``counts`` records (per topic) may be published (0: now); samples lag
        first when an interval has passed."""
        now = self.clock() if now is None else now
        with self._lock:
            for topic in counts:
                self.throttle(topic)  # measured from the first sample on
        changed = self._maybe_sample(now)
        with self._lock:
            wait = 0.0
            for topic, n in counts.items():
                t = self._throttles[topic]
                if t.state == "paused":  # nothing until a sample says the wait fell
                    wait = max(wait, self._next_sample - now, 0.001)
                else:
                    wait = max(wait, t.bucket.wait_s(now, float(n)))
        if changed:
            self._changed()
        return wait

    def take(self, counts: Mapping[str, int], now: float | None = None) -> None:
        """Spend tokens for ``counts`` records published (the bucket may go into debt)."""
        now = self.clock() if now is None else now
        with self._lock:
            for topic, n in counts.items():
                self.throttle(topic).bucket.take(now, float(n))

    def acquire(self, counts: Mapping[str, int]) -> dict[str, TopicThrottle]:
        """Block until ``counts`` may be published, spend the tokens, and return the
        throttles (for the send spans). Ctrl-C interrupts the wait (the wait is a lock
        acquire, which signals interrupt).

        Raises:
            StoreClosedError: :meth:`close` was called while waiting.
        """
        while True:
            wait = self.wait_s(counts)
            if wait <= 0:
                break
            if self._closed.wait(wait):
                raise StoreClosedError("the blackboard was closed while a publish was throttled")
        self.take(counts)
        with self._lock:
            return {topic: self.throttle(topic) for topic in counts}

    def close(self) -> None:
        """Wake and fail every publisher waiting in :meth:`acquire`."""
        self._closed.set()

    # -- sampling -------------------------------------------------------------------------
    def sample(self, now: float | None = None) -> None:
        """Read lag now and update every throttle (tests call it directly)."""
        now = self.clock() if now is None else now
        rows = self._lag()
        with self._lock:
            self._apply(rows, now)
            self._next_sample = now + self.settings.sample_interval_s
        self._changed()

    def _maybe_sample(self, now: float) -> bool:
        """Sample if due (inline, or start/collect a background read); True if applied."""
        if not self._background:
            if now < self._next_sample:
                return False
            with self._lock:
                if now < self._next_sample:  # another thread sampled meanwhile
                    return False
                self._next_sample = now + self.settings.sample_interval_s
            rows = self._read()
            if rows is None:
                return False
            with self._lock:
                self._apply(rows, now)
            return True
        with self._lock:
            fetched, self._fetched = self._fetched, None
            if fetched is not None:
                self._apply(fetched, now)
            if now >= self._next_sample and not self._sampling:
                self._sampling = True
                self._next_sample = now + self.settings.sample_interval_s
                threading.Thread(target=self._fetch, name="bb-backpressure", daemon=True).start()
        return fetched is not None

    def _lag(self) -> list[LagRow]:
        """Lag of the groups that count (asking for them by name: on a shared cluster every
        group's lag would cost a call per group)."""
        groups = [
            g for g in self.store.list_groups()
            if g.startswith(self._prefix) and g not in self._exclude
        ]  # fmt: skip
        return self.store.lag(groups)

    def _read(self) -> list[LagRow] | None:
        try:
            return self._lag()
        except Exception as exc:  # no sample this interval; the throttle keeps its rate
            log.warning("could not read lag", error=str(exc), error_type=type(exc).__name__)
            return None

    def _fetch(self) -> None:
        rows = self._read()
        with self._lock:
            self._sampling = False
            if rows is not None:
                self._fetched = rows

    def _apply(self, rows: Iterable[LagRow], now: float) -> None:
        """One measurement per target topic (lock held)."""
        lag: dict[tuple[str, str], int] = {}
        done: dict[tuple[str, str], int] = {}
        for r in rows:
            if r.topic not in self._throttles or r.group in self._exclude:
                continue
            if not r.group.startswith(self._prefix):
                continue
            key = (r.group, r.topic)
            lag[key] = lag.get(key, 0) + r.lag
            done[key] = done.get(key, 0) + (r.committed_offset or 0)
        worst: dict[str, tuple[float, str, int, float]] = {}
        for key, total in lag.items():
            m = self._measures.get(key)
            if m is None:
                m = self._measures[key] = _Measure()
            m.lag = total
            m.window.append((now, done[key]))
            if total > 0 and len(m.window) < 2:
                continue  # no drain rate yet: not judged
            drain = rate(list(m.window))
            wait = expected_wait_s(total, drain)
            group, topic = key
            if topic not in worst or wait > worst[topic][0]:
                worst[topic] = (wait, group, total, drain)
        for topic, (wait, group, total, drain) in worst.items():
            t = self._throttles[topic]
            before = t.controller.rate
            t.controller.update(total, drain)
            t.lag, t.drain_per_s, t.expected_wait_s, t.group = total, drain, wait, group
            if t.controller.rate != before and t.rate > 0:
                b = t.bucket
                b.rate, b.burst = t.rate, max(1.0, t.rate * self.settings.burst_s)
                b.tokens = min(b.tokens, b.burst)

    def _changed(self) -> None:
        """Tell ``on_change`` about a state change, or every few intervals while throttled."""
        if self._on_change is None:
            return
        with self._lock:
            states = tuple((t.topic, t.state) for t in self._throttles.values())
            now = self.clock()
            due = any(s != "normal" for _, s in states) and (
                now - self._last_report >= REPORT_EVERY * self.settings.sample_interval_s
            )
            if states == self._reported and not due:
                return
            self._reported = states
            self._last_report = now
        self._on_change()

    def report(self) -> dict[str, dict[str, Any]]:
        """Every topic's state, rate, lag, expected wait and slowest group
        (``bb.throttle.group``; for status reports, which the dashboard draws)."""
        with self._lock:
            return {
                topic: {**t.attributes(), "bb.throttle.group": t.group}
                for topic, t in sorted(self._throttles.items())
            }
