"""A member's place in its Redis consumer group: registration, heartbeats and the pub/sub
listener.

A member holds a *slot* (the worker slot, or an anonymous one) and a random *token* naming this
process. Its session is an entry of the group's members sorted set whose score is the expiry in
Redis server time; the heartbeat extends it every ``heartbeat_interval_ms`` and expels members
whose session ran out. A first join with a slot someone else holds takes the slot over (the
earlier process is *superseded*, as a restarted Kafka slot fences its predecessor); a member
whose own session ran out rejoins, unless a newer process holds its slot by then.

The listener subscribes to the group's channel (joins, leaves, expulsions, freed leases), the
topics channel (topics created) and one channel per subscribed topic (appends, with the
partition number), so a waiting member wakes as soon as there is something to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from blackboard.aio import cancel_and_wait
from blackboard.errors import SupersededError
from blackboard.logs import get_logger
from blackboard.records import TopicPartition
from blackboard.stores.redis import scripts
from blackboard.stores.redis.entries import text
from blackboard.stores.redis.settings import GroupKeys, RedisKeys, RedisSettings

if TYPE_CHECKING:
    import redis.asyncio

log = get_logger("redis")

#: Seconds between two warnings about the same failing call.
WARN_EVERY_S = 5.0


class Warnings:
    """Warns about a failing call once per :data:`WARN_EVERY_S`, and says when it works again
    (a server restarting makes every call fail for a while)."""

    def __init__(self, group: str) -> None:
        self._group = group
        self._since: dict[str, float] = {}

    def failed(self, action: str, exc: BaseException) -> None:
        """``action`` failed with ``exc``."""
        now = time.monotonic()
        if now - self._since.get(action, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._since[action] = now
            log.warning(
                "redis call failed; retrying",
                group=self._group,
                action=action,
                error=f"{type(exc).__name__}: {exc}",
            )

    def worked(self, action: str) -> None:
        """``action`` succeeded."""
        if self._since.pop(action, None) is not None:
            log.info("redis call works again", group=self._group, action=action)


class GroupSession:
    """Registration, heartbeats and wake-ups of one member.

    Args:
        client: the member's client.
        keys: the store's key names.
        group: the consumer group.
        slot: the member's slot.
        topics: the topics the member subscribes to.
        settings: session timeout and heartbeat interval.
        changed: called (on the event loop) when the group may have changed: sync soon.
        appended: called with a partition records were appended to.
        tick: awaited after every heartbeat (periodic work of the member).
        warnings: where failing calls are reported.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: RedisKeys,
        group: str,
        slot: str,
        topics: tuple[str, ...],
        settings: RedisSettings,
        *,
        changed: Callable[[], None],
        appended: Callable[[TopicPartition], None],
        tick: Callable[[], Awaitable[None]],
        warnings: Warnings,
    ) -> None:
        self.group = group
        self.slot = slot
        self.token = self.new_token()
        self.keys: GroupKeys = keys.group(group)
        #: The session ran out: the member lost its partitions and must rejoin.
        self.expelled = False
        #: Another process holds the slot now: the member must stop using it.
        self.superseded = False
        self._client = client
        self._store_keys = keys
        self._topics = topics
        self._settings = settings
        self._changed = changed
        self._appended = appended
        self._tick = tick
        self._warnings = warnings
        self._join = client.register_script(scripts.JOIN)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._leave = client.register_script(scripts.LEAVE)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    @staticmethod
    def new_token() -> str:
        """A random token (32 hex digits)."""
        return uuid.uuid4().hex

    async def join(self, *, rejoin: bool = False) -> None:
        """Register (again, after an expulsion, when ``rejoin``).

        Raises:
            RedisError: Redis did not answer.
        """
        gk = self.keys
        reply = await self._join(
            keys=[gk.members, gk.tokens, gk.subs, self._store_keys.groups],
            args=[
                self.slot,
                self.token,
                json.dumps(self._topics),
                self._settings.session_timeout_ms,
                self.group,
                gk.channel,
                "1" if rejoin else "0",
            ],
        )
        if int(reply[0]) == -1:
            self._give_up_slot()
            return
        self.expelled = False
        if len(reply) > 1 and reply[1] is not None and text(reply[1]) != self.token:
            log.warning(
                "took over the worker slot from an earlier process",
                group=self.group,
                slot=self.slot,
            )

    def start(self) -> None:
        """Start heartbeating and listening (on the running event loop)."""
        name = f"{self.group}.{self.slot}"
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name=f"redis-heartbeat:{name}"),
            asyncio.create_task(self._listen_loop(), name=f"redis-listen:{name}"),
        ]

    async def stop(self) -> None:
        """Stop heartbeating and listening (the loops also end at their next turn)."""
        self._stopping = True
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def leave(self, leases: dict[TopicPartition, str]) -> None:
        """Free ``leases`` (those still holding these values) and leave the group, if the slot
        is still ours.

        Raises:
            RedisError: Redis did not answer.
        """
        gk = self.keys
        await self._leave(
            keys=[gk.members, gk.tokens, gk.subs, *(gk.lease(tp) for tp in leases)],
            args=[self.slot, self.token, gk.channel, *leases.values()],
        )

    async def slot_taken(self) -> bool:
        """Whether another process holds the slot now (and mark the session superseded).

        Raises:
            RedisError: Redis did not answer.
        """
        holder = await self._client.hget(self.keys.tokens, self.slot)
        if holder is not None and text(holder) != self.token:
            self._give_up_slot()
        return self.superseded

    async def check_slot(self) -> None:
        """Raise if another process holds the slot now (:meth:`slot_taken`).

        Raises:
            SupersededError: it does.
            RedisError: Redis did not answer.
        """
        if await self.slot_taken():
            raise SupersededError(
                f"worker slot {self.slot} of {self.group} was taken over by a newer process",
                code="SUPERSEDED",
            )

    def superseded_error(self) -> SupersededError | None:
        """The error for polls and commits once another process holds the slot, or None."""
        if not self.superseded:
            return None
        return SupersededError(
            f"worker slot {self.slot} of {self.group} was taken over", code="SUPERSEDED"
        )

    def _give_up_slot(self) -> None:
        if not self.superseded:
            log.error(
                "a newer process took over this worker slot; giving up its partitions",
                group=self.group,
                slot=self.slot,
            )
        self.superseded = True
        self._changed()

    async def _heartbeat_loop(self) -> None:
        interval = self._settings.heartbeat_interval_ms / 1000.0
        gk = self.keys
        while not (self.superseded or self._stopping):
            await asyncio.sleep(interval)
            try:
                status = await self._heartbeat(
                    keys=[gk.members, gk.tokens, gk.subs],
                    args=[self.slot, self.token, self._settings.session_timeout_ms, gk.channel],
                )
            except RedisError as exc:
                self._warnings.failed("heartbeat", exc)
                continue
            self._warnings.worked("heartbeat")
            code = int(status[0])
            if code == -1:
                self._give_up_slot()
            elif code == 0 and not self.expelled:
                log.warning("session ran out; rejoining", group=self.group, slot=self.slot)
                self.expelled = True
            self._changed()  # a periodic sync also catches what the channels missed
            await self._tick()

    async def _listen_loop(self) -> None:
        data = {self._store_keys.data_channel(t).encode(): t for t in self._topics}
        channels = [self.keys.channel, self._store_keys.topics_channel, *(c.decode() for c in data)]
        pubsub: Any = None
        delay = 0.05
        try:
            while not self._stopping:
                try:
                    if pubsub is None:
                        pubsub = self._client.pubsub()
                        await pubsub.subscribe(*channels)
                        self._warnings.worked("listen")
                        self._changed()  # messages may have been missed meanwhile
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except RedisError as exc:
                    self._warnings.failed("listen", exc)
                    if pubsub is not None:
                        with contextlib.suppress(RedisError):
                            await pubsub.aclose()
                        pubsub = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                delay = 0.05
                if message is None:
                    continue
                topic = data.get(message["channel"])
                if topic is None:
                    self._changed()
                else:
                    self._appended(TopicPartition(topic, int(message["data"])))
        finally:
            if pubsub is not None:
                with contextlib.suppress(RedisError):
                    await pubsub.aclose()
