"""What ``join_aware`` asks a join agent's held state: would this part complete its join?

Held parts live in the runner's per-partition keyed state under ``bb.join:<key>`` as
``{"since": t, "parts": [{"type": ..., ...}, ...]}`` (see :mod:`agents.collect`).
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

JOIN_PREFIX = "bb.join:"


def completes_join(
    wanted: Mapping[str, int], state: Mapping[str, bytes], key: str, art_type: str
) -> bool:
    """Whether a part of ``art_type`` for join ``key`` completes the set ``wanted``
    (type → count), given the partition's held state."""
    raw = state.get(JOIN_PREFIX + key)
    have: dict[str, int] = {}
    if raw:
        for part in orjson.loads(raw).get("parts", ()):
            have[part["type"]] = have.get(part["type"], 0) + 1
    have[art_type] = have.get(art_type, 0) + 1
    return all(have.get(t, 0) >= n for t, n in wanted.items())
