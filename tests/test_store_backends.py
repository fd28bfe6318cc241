"""The backend registry (blackboard.stores) and the capabilities stores declare as attributes,
which callers read instead of guessing from URL strings."""

from __future__ import annotations

import pytest

from bench.kafka_pipeline import is_redis
from blackboard.blackboard import Blackboard
from blackboard.errors import UnknownStoreError
from blackboard.stores import BACKENDS, backend_for, is_embedded, store_class
from blackboard.stores.memory.store import MemoryStore
from scheduler.ratelimit import RateLimit, RateLimiter
from scheduler.throttle import BackpressureSettings
from scheduler.throttle_hooks import agent_limiter, backpressure


@pytest.mark.parametrize("scheme", list(BACKENDS))
def test_each_registry_line_names_a_store_of_its_own_system(scheme: str) -> None:
    line = BACKENDS[scheme]
    cls = line.store_class()
    assert cls.__name__ == line.class_name and cls.system == scheme
    # Only a store outside the process needs a test server, and a marker to select its tests.
    assert (line.server is None) == cls.embedded and (line.marker is None) == cls.embedded


def test_lookups_by_url() -> None:
    assert backend_for("redis://h:6379/0") is BACKENDS["redis"]
    assert store_class("memory:///tmp/board.bb") is MemoryStore
    assert is_embedded("memory://") and is_embedded("memory:///tmp/board.bb")
    assert not is_embedded("kafka://h:9092") and not is_embedded("redis://h:6379/0")
    assert not is_embedded("rediss://h:6380/0")  # a redis-py URL, no store scheme
    with pytest.raises(UnknownStoreError):
        store_class("memory:")
    assert is_redis("redis://h:6379/0") and not is_redis("kafka://h:9092")


class _RemoteLooking(MemoryStore):
    """An embedded store that says it is not: the attribute decides, not its URL."""

    embedded = False


@pytest.mark.parametrize("store_type", [MemoryStore, _RemoteLooking])
def test_backpressure_reads_lag_inline_only_on_an_embedded_store(
    store_type: type[MemoryStore],
) -> None:
    store = store_type()
    board = Blackboard(store, hooks=[backpressure(BackpressureSettings(enabled=True))])
    limiter = agent_limiter(board, "bb.a", ["some.Type"], None, lambda: None)
    assert limiter is not None
    assert limiter.backpressure._background is not store.embedded
    board.close()


def test_a_rate_limit_shared_through_an_embedded_store_stays_in_the_runner() -> None:
    limiter = RateLimit(requests_per_s=1.0, shared="memory:///tmp/unused").limiter("bb.a")
    assert isinstance(limiter, RateLimiter)
