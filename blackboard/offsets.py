"""Out-of-order completion inside a partition (docs/DESIGN.md §4).

Records of one partition may finish in any order. The offset a group commits is the lowest
one still unfinished; the offsets above it that did finish travel in the commit's metadata and
are skipped after a restart, so their outputs are never produced twice.

Offsets are tracked as *seen* rather than counted, because a Kafka partition has gaps (the
markers of transactions take offsets that consumers never see).

Metadata format: ``bb1:`` then comma-separated ranges of offsets relative to the committed
one, in base 36 (``2-4,7`` = committed+2 … committed+4 and committed+7).
"""

from __future__ import annotations

from collections.abc import Iterable

from blackboard.records import CommittedOffset

_PREFIX = "bb1:"


def encode_finished(base: int, finished: Iterable[int]) -> str:
    """Metadata naming the ``finished`` offsets (all ``>= base``) relative to ``base``."""
    offsets = sorted(finished)
    if not offsets:
        return ""
    parts: list[str] = []
    start = prev = offsets[0]
    for off in offsets[1:]:
        if off == prev + 1:
            prev = off
            continue
        parts.append(_range(start - base, prev - base))
        start = prev = off
    parts.append(_range(start - base, prev - base))
    return _PREFIX + ",".join(parts)


def decode_finished(base: int, metadata: str) -> set[int]:
    """The offsets named by metadata from :func:`encode_finished` (empty for other text)."""
    if not metadata.startswith(_PREFIX):
        return set()
    found: set[int] = set()
    for part in metadata[len(_PREFIX) :].split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        first = int(lo, 36)
        last = int(hi, 36) if hi else first
        found.update(range(base + first, base + last + 1))
    return found


def _range(lo: int, hi: int) -> str:
    return _b36(lo) if lo == hi else f"{_b36(lo)}-{_b36(hi)}"


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if n == 0:
        return "0"
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(digits[r])
    return "".join(reversed(out))


class PartitionProgress:
    """Which offsets of one partition are in flight and which finished, since the last commit.

    Args:
        committed: the group's committed offset (where reading starts).
        metadata: the committed metadata, naming offsets above it that already finished.
    """

    __slots__ = ("_finished", "_next", "_pending")

    def __init__(self, committed: int, metadata: str = "") -> None:
        self._pending: set[int] = set()
        self._finished: set[int] = decode_finished(committed, metadata)
        self._next = committed

    def skip_to(self, position: int) -> bool:
        """Note that the store's log holds no record below ``position`` beyond those read
        (e.g. Kafka's transaction markers after the last record); True if that moved the
        next offset to read, i.e. the commit position of a partition with nothing in flight."""
        if position <= self._next:
            return False
        self._next = position
        return True

    def start(self, offset: int) -> bool:
        """Note that ``offset`` was read. False means it finished before: skip it."""
        if offset >= self._next:
            self._next = offset + 1
        if offset in self._finished:
            return False
        self._pending.add(offset)
        return True

    def finish(self, offset: int) -> None:
        """Note that the record at ``offset`` finished (its effects are in the next commit)."""
        self._pending.discard(offset)
        self._finished.add(offset)

    @property
    def in_flight(self) -> int:
        """Offsets read and not finished."""
        return len(self._pending)

    def low(self) -> int:
        """The lowest offset not known to be finished: what a commit would store."""
        return min(self._pending) if self._pending else self._next

    def span(self) -> int:
        """How far reading has run ahead of :meth:`low` (bounds the metadata's size)."""
        return self._next - self.low()

    def position(self) -> CommittedOffset:
        """The offset and metadata to commit now; forgets finished offsets below it."""
        low = self.low()
        self._finished = {o for o in self._finished if o >= low}
        return CommittedOffset(low, encode_finished(low, self._finished))
