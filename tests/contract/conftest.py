"""The contract suite runs over every backend of the registry (``blackboard.stores.BACKENDS``).

Each backend is one parameter of :func:`store_url`, carrying the backend's pytest marker (so
``-m "not kafka"`` leaves out exactly the Kafka runs); its server comes from the session
fixture its registry line names (``tests/services.py``). A new backend in the registry runs
the very same tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from blackboard.blackboard import Blackboard, BlackboardSettings
from blackboard.store import Store
from blackboard.stores import BACKENDS, Backend, open_store


def _param(backend: Backend) -> Any:
    marks = [getattr(pytest.mark, backend.marker)] if backend.marker else []
    return pytest.param(backend, id=backend.scheme, marks=marks)


@pytest.fixture(params=[_param(backend) for backend in BACKENDS.values()])
def store_url(request: pytest.FixtureRequest) -> str:
    """The URL of a store of each backend."""
    backend: Backend = request.param
    if backend.server is None:
        return f"{backend.scheme}://"
    return str(request.getfixturevalue(backend.server))


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
