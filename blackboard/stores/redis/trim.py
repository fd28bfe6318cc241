"""A member's periodic trimming of the streams it owns (``trim_interval_s``).

Each run is :data:`~blackboard.stores.redis.scripts.TRIM` per owned stream: ``XTRIM MINID``
below the lowest offset every consumer group of the stream has committed, as
:meth:`RedisStore.trim <blackboard.stores.redis.store.RedisStore.trim>` does for all of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from blackboard.logs import get_logger
from blackboard.records import TopicPartition
from blackboard.stores.redis import scripts
from blackboard.stores.redis.ownership import partition_name
from blackboard.stores.redis.session import Warnings
from blackboard.stores.redis.settings import RedisKeys

if TYPE_CHECKING:
    import redis.asyncio

log = get_logger("redis")


class Trimmer:
    """Trims a member's streams every ``interval`` seconds (0: never).

    Args:
        client: the member's client.
        keys: the store's key names.
        interval: seconds between two runs (``trim_interval_s``).
        warnings: where a failing trim is reported.
    """

    def __init__(
        self, client: redis.asyncio.Redis, keys: RedisKeys, interval: float, warnings: Warnings
    ) -> None:
        self._keys = keys
        self._interval = interval
        self._warnings = warnings
        self._script = client.register_script(scripts.TRIM)
        self._next = time.monotonic() + interval

    async def tick(self, owned: Iterable[TopicPartition]) -> None:
        """Trim the ``owned`` streams if a run is due (called after each heartbeat)."""
        if not self._interval or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self._interval
        for tp in sorted(owned):
            try:
                removed = await self._script(keys=[self._keys.stream(tp)], args=[self._keys.prefix])
            except RedisError as exc:
                self._warnings.failed("trim", exc)
                return
            if removed:
                log.info("stream trimmed", partition=partition_name(tp), removed=int(removed))
