"""Store backends, chosen by URL scheme.

Each backend lives in its own module named after the system and is imported only when its
scheme is used, so a missing optional dependency is reported as one line naming the package.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from blackboard.errors import MissingDependencyError, UnknownStoreError
from blackboard.store import Store

#: scheme -> (module, class, pip extra that provides its driver)
BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("blackboard.stores.memory", "MemoryStore", None),
    "kafka": ("blackboard.stores.kafka.store", "KafkaStore", "kafka"),
    "redis": ("blackboard.stores.redis.store", "RedisStore", "redis"),
}

DEFAULT_URL = "memory://"


def open_store(url: str | None = None) -> Store:
    """Open the store named by ``url`` (default ``memory://``).

    Raises:
        UnknownStoreError: the scheme is not one of :data:`BACKENDS`.
        MissingDependencyError: the backend's driver is not installed.
    """
    url = url or DEFAULT_URL
    scheme = urlsplit(url).scheme
    if "://" not in url or scheme not in BACKENDS:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        raise UnknownStoreError(f"unknown store URL {url!r}: the scheme must be one of {known}")
    module_name, class_name, extra = BACKENDS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and not exc.name.startswith("blackboard"):
            raise MissingDependencyError(
                f"the {scheme}:// store needs the {exc.name!r} package: "
                f"pip install 'kafka-blackboard[{extra}]'"
            ) from exc
        raise UnknownStoreError(f"the {scheme}:// store is not available in this version") from exc
    store_class: type[Store] = getattr(module, class_name)
    return store_class(url)
