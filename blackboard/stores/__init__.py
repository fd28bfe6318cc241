"""Store backends, chosen by URL scheme from one registry (:data:`BACKENDS`).

Each backend lives in its own module or package named after the system and is imported only
when its scheme is used, so a missing optional dependency is reported as one line naming the
package. A registry line also names what the test suite needs to run the shared contract
tests on the backend: its pytest marker and the fixture serving a test server's URL
(``docs/BACKENDS.md``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from urllib.parse import urlsplit

from blackboard.errors import MissingDependencyError, UnknownStoreError
from blackboard.redact import redact_url
from blackboard.store import Store


@dataclass(frozen=True, slots=True)
class Backend:
    """One registry line: a URL scheme and the store class serving it."""

    scheme: str
    module: str
    """The module defining the store class, imported on first use."""
    class_name: str
    extra: str | None = None
    """The pip extra that installs the backend's driver (None: no driver needed)."""
    marker: str | None = None
    """The pytest marker of tests that need the backend's server (None: no server)."""
    server: str | None = None
    """The pytest fixture giving a test server's store URL (None: ``<scheme>://`` will do)."""

    def store_class(self) -> type[Store]:
        """The store class, its module imported now.

        Raises:
            MissingDependencyError: the backend's driver is not installed.
            UnknownStoreError: the backend's module is not part of this version.
        """
        try:
            module = importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            if exc.name and not exc.name.startswith("blackboard"):
                raise MissingDependencyError(
                    f"the {self.scheme}:// store needs the {exc.name!r} package: "
                    f"pip install 'kafka-blackboard[{self.extra}]'"
                ) from exc
            raise UnknownStoreError(
                f"the {self.scheme}:// store is not available in this version"
            ) from exc
        store_class: type[Store] = getattr(module, self.class_name)
        return store_class


BACKENDS: dict[str, Backend] = {
    backend.scheme: backend
    for backend in (
        Backend("memory", "blackboard.stores.memory.store", "MemoryStore"),
        Backend(
            "kafka",
            "blackboard.stores.kafka.store",
            "KafkaStore",
            extra="kafka",
            marker="kafka",
            server="kafka_url",
        ),
        Backend(
            "redis",
            "blackboard.stores.redis.store",
            "RedisStore",
            extra="redis",
            marker="redis",
            server="redis_url",
        ),
    )
}

DEFAULT_URL = "memory://"


def backend_for(url: str) -> Backend:
    """The registry line of ``url``'s scheme.

    Raises:
        UnknownStoreError: the scheme is not one of :data:`BACKENDS`.
    """
    scheme = urlsplit(url).scheme
    if "://" not in url or scheme not in BACKENDS:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        raise UnknownStoreError(
            f"unknown store URL {redact_url(url)!r}: the scheme must be one of {known}"
        )
    return BACKENDS[scheme]


def store_class(url: str) -> type[Store]:
    """The class of the store ``url`` names, for its capabilities (:attr:`Store.system`,
    :attr:`Store.embedded`) without opening one.

    Raises:
        UnknownStoreError, MissingDependencyError: as :func:`open_store`.
    """
    return backend_for(url).store_class()


def is_embedded(url: str) -> bool:
    """Whether ``url`` names a store that runs in this process (:attr:`Store.embedded`).

    False for any other URL, also for a backend whose driver is missing: only stores outside
    the process need one.
    """
    try:
        return store_class(url).embedded
    except (UnknownStoreError, MissingDependencyError):
        return False


def open_store(url: str | None = None) -> Store:
    """Open the store named by ``url`` (default ``memory://``).

    Raises:
        UnknownStoreError: the scheme is not one of :data:`BACKENDS`.
        MissingDependencyError: the backend's driver is not installed.
    """
    url = url or DEFAULT_URL
    return store_class(url)(url)
