"""The contract suite runs over every store backend this version implements.

A backend is in the list as soon as its module exists, so the Kafka and Redis stores run the
very same tests; their servers come from the session fixtures of ``tests/services.py``.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator

import pytest

from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.store import Store
from blackboard.stores import open_store

BACKENDS = [
    name
    for name in ("memory", "kafka", "redis")
    if importlib.util.find_spec(f"blackboard.stores.{name}") is not None
]


def _url(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "kafka":
        return f"kafka://{request.getfixturevalue('kafka_bootstrap')}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest) -> str:
    """The URL of a store of each backend."""
    return _url(request.param, request)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An open store of each backend."""
    opened = open_store(store_url)
    yield opened
    opened.close()


@pytest.fixture
def prefix() -> str:
    """A fresh topic prefix, so tests never see each other's topics or groups."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def board(store: Store, prefix: str) -> Blackboard:
    """A blackboard with 4 partitions per topic on each backend."""
    from tests.contract.types import registry

    return Blackboard(
        store,
        registry=registry,
        settings=BlackboardSettings(url=store.url, prefix=prefix, partitions=4),
    )
