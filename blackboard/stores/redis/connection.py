"""The asyncio connection of group members: commands packed by hiredis (C) when it is installed.

redis-py's asyncio connection packs every argument of every command in Python (an encoder
call, a length, a join per argument); a commit's ``EVAL`` carries four arguments per record
appended, and with hundreds of records per commit that packing was a tenth of the worker's
event-loop time. ``hiredis.pack_command`` does the same in C. Imported only by
:meth:`blackboard.stores.redis.store.RedisStore.async_client`, after redis-py itself.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio

try:
    import hiredis

    HIREDIS = True
except ImportError:  # an optional speed-up: redis-py packs in Python without it
    HIREDIS = False


class PackingConnection(redis.asyncio.Connection):
    """A TCP connection whose commands hiredis packs; a command with an argument hiredis does
    not take (a bytearray, or a type redis-py refuses too) goes to redis-py's own packer, which
    raises its usual ``DataError``."""

    def pack_command(self, *args: Any) -> list[bytes]:
        command = args[0]
        if isinstance(command, str):  # "XGROUP CREATE": the server wants the words apart
            args = (*command.encode().split(), *args[1:])
        elif isinstance(command, bytes) and b" " in command:
            args = (*command.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return super().pack_command(*args)


def connection_class() -> type[redis.asyncio.Connection] | None:
    """The class to connect with over TCP, or None (redis-py's default) without hiredis."""
    return PackingConnection if HIREDIS else None
