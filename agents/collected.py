"""What a join or batch handler gets: a :class:`JoinSet` (every part of one join key, by type)
or a :class:`Batch` (records of one type), each part an artifact with the record it came in."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from blackboard.artifacts import Artifact, Envelope, TypeRegistry
from blackboard.records import Record

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Part:
    """One held artifact and the record it was read as."""

    artifact: Artifact[BaseModel]
    record: Record


class _Parts:
    """Held parts, in arrival order."""

    def __init__(self, key: str, parts: Sequence[Part]) -> None:
        self.key = key
        self.parts = list(parts)

    @property
    def envelopes(self) -> list[Envelope]:
        """Every part's envelope."""
        return [p.artifact.envelope for p in self.parts]

    def __len__(self) -> int:
        return len(self.parts)


class JoinSet(_Parts):
    """The parts of one join key, given to a join handler (complete) or ``on_timeout``.

    ``joined[Review]`` is the list of Review payloads, in arrival order.
    """

    def __init__(
        self,
        key: str,
        parts: Sequence[Part],
        wanted: Mapping[str, int],
        registry: TypeRegistry,
    ) -> None:
        super().__init__(key, parts)
        self._wanted = dict(wanted)
        self._registry = registry

    def __getitem__(self, model: type[M]) -> list[M]:
        return [p.artifact.payload for p in self.of(model)]  # type: ignore[misc]

    def of(self, model: type[BaseModel]) -> list[Part]:
        """The parts of one type."""
        name = self._registry.of(model).name
        return [p for p in self.parts if p.artifact.type == name]

    @property
    def missing(self) -> dict[str, int]:
        """Type name → how many parts of it have not arrived."""
        have: dict[str, int] = {}
        for p in self.parts:
            have[p.artifact.type] = have.get(p.artifact.type, 0) + 1
        return {t: n - have.get(t, 0) for t, n in self._wanted.items() if have.get(t, 0) < n}

    @property
    def complete(self) -> bool:
        """Whether every wanted part arrived."""
        return not self.missing


class Batch(_Parts, Generic[M]):
    """Records of one type (and key), given to a batch handler together.

    Attributes:
        key: the batch key.
        type: the registered name of the records' artifact type (``shop.Order``).
    """

    def __init__(self, key: str, parts: Sequence[Part], type: str = "") -> None:
        super().__init__(key, parts)
        self.type = type

    @property
    def payloads(self) -> list[M]:
        """The payloads, in arrival order."""
        return [p.artifact.payload for p in self.parts]  # type: ignore[misc]

    def __iter__(self) -> Iterator[M]:
        return iter(self.payloads)
