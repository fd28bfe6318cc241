"""The ``redis://`` backend: Redis Streams through redis-py (docs/DESIGN.md §3).

- :mod:`~blackboard.stores.redis.store` — :class:`RedisStore`: topics, publishing, reads,
  end offsets, lag with the Redis consumer groups' own figures, trimming.
- :mod:`~blackboard.stores.redis.member` — :class:`RedisMember`: polling, reads, commits and
  committed positions; the group protocol run by the member itself through the modules below.
- :mod:`~blackboard.stores.redis.ownership` — the partition leases a member holds and the sync
  that moves them (rebalance callbacks, claims of pending entries).
- :mod:`~blackboard.stores.redis.session` — registration, heartbeats, pub/sub wake-ups.
- :mod:`~blackboard.stores.redis.group` — the live members' view of a group.
- :mod:`~blackboard.stores.redis.scripts` — the Lua scripts of the group protocol.
- :mod:`~blackboard.stores.redis.commit` — one atomic commit: ``WATCH``/``MULTI``/``EXEC``.
- :mod:`~blackboard.stores.redis.entries` — the stream entry layout and offsets.
- :mod:`~blackboard.stores.redis.settings` — settings from the URL; every key name.
- :mod:`~blackboard.stores.redis.errors` — Redis errors translated into ours.
- :mod:`~blackboard.stores.redis.trim` — a member's periodic trimming of its streams.
- :mod:`~blackboard.stores.redis.connection` — hiredis command packing for members.

Nothing is imported here, so reading the settings or entries does not load redis-py.
"""
