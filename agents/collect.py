"""Joins and batches: agents that wait for several artifacts before their handler runs.

A *join* holds the parts that arrived for a join key (default: the correlation id) until it has
the count of each type its spec asks for, then hands them to the handler as a :class:`JoinSet`;
a partial set older than ``timeout_s`` goes to ``on_timeout`` or to the dead-letter topic. A
*batch* holds records of one type (per key, default: one batch per partition) until it has
``max_records`` of them or the first is ``max_wait_ms`` old, then hands them over as a
:class:`Batch`.

Everything held lives in the agent's keyed state, written in the same atomic commit as the
offsets of the records that changed it, so a worker killed mid-join or mid-batch loses nothing
and fires nothing twice: the next owner of the partition restores the state with the offsets.
Parts are kept as their records (key, value and headers byte-for-byte), so a timed-out part is
dead-lettered exactly as it was read. State keys (all under ``bb.``):

- ``bb.join:<key>`` → ``{"since": t, "parts": [part, ...]}``; ``bb.joined:<key>`` → when it
  fired (later parts of that key are extras), forgotten after ``done_ttl_s``;
- ``bb.batch:<key>`` → ``{"since": t, "parts": [part, ...]}``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

import orjson
from pydantic import BaseModel

from blackboard.artifacts import Artifact, ArtifactType, Envelope, TypeRegistry
from blackboard.errors import AgentError, JoinError
from blackboard.records import Record, partition_for
from blackboard.wire import decode

if TYPE_CHECKING:
    from agents.context import KeyedState

M = TypeVar("M", bound=BaseModel)
KeyFn = Callable[[BaseModel, Envelope], str]
Extras = Literal["drop", "dead_letter"]

_JOIN = "bb.join:"
_JOINED = "bb.joined:"
_BATCH = "bb.batch:"


def correlation_key(payload: BaseModel, envelope: Envelope) -> str:
    """The default join key: the artifact's correlation id."""
    return envelope.correlation_id


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
    """Records of one type (and key), given to a batch handler together."""

    @property
    def payloads(self) -> list[M]:
        """The payloads, in arrival order."""
        return [p.artifact.payload for p in self.parts]  # type: ignore[misc]

    def __iter__(self) -> Iterator[M]:
        return iter(self.payloads)


@dataclass(frozen=True, slots=True)
class Fired:
    """What a collector hands to the handler: ``why`` is complete, timeout or batch."""

    why: Literal["complete", "timeout", "batch"]
    key: str
    parts: list[Part]


@dataclass(frozen=True, slots=True)
class Collector:
    """How a join or batch agent holds artifacts. Built by :meth:`agents.App.join` and
    :meth:`agents.App.batch`.

    Attributes:
        kind: "join" or "batch".
        wanted: join: type name → parts wanted; batch: the one type → ``max_records``.
        key: the join or batch key of an artifact.
        timeout_s: join: how long a partial set waits; batch: ``max_wait_ms`` in seconds.
        extras: join: what to do with a part beyond its type's count.
        on_timeout: join: handler of a timed-out partial set (None: dead-letter its parts).
        done_ttl_s: join: how long a fired key counts later parts as extras.
        co_partitioned: join keys must map to the record's partition.
    """

    kind: Literal["join", "batch"]
    wanted: Mapping[str, int]
    key: KeyFn = correlation_key
    timeout_s: float | None = None
    extras: Extras = "drop"
    on_timeout: Callable[..., Any] | None = None
    done_ttl_s: float = 3600.0
    co_partitioned: bool = True
    registry: TypeRegistry | None = field(default=None, compare=False)

    def order_key(self, art: Artifact[BaseModel]) -> str:
        """The key records are serialised on (one join or batch at a time)."""
        return self.key(art.payload, art.envelope)

    def check_partition(self, key: str, record: Record, partitions: int) -> None:
        """Refuse a join part whose key lives on another partition than the record.

        Raises:
            JoinError: the topics are not co-partitioned by the join key.
        """
        if self.kind != "join" or not self.co_partitioned:
            return
        expected = partition_for(key.encode(), partitions)
        if expected != record.partition:
            raise JoinError(
                f"join key {key!r} belongs to partition {expected} but {record.topic} record "
                f"@{record.offset} is on partition {record.partition}: publish every part with "
                "partition_key = its join key (the default, the correlation id, does that)"
            )

    # -- holding ---------------------------------------------------------------------------
    def add(
        self, art: Artifact[BaseModel], record: Record, state: KeyedState, now: float
    ) -> Fired | None:
        """Hold ``art``; what fires now, if anything.

        Raises:
            JoinError: an extra part and ``extras="dead_letter"``.
        """
        key = self.order_key(art)
        if self.kind == "batch":
            held = _load(state.get(_BATCH + key))
            docs = held.setdefault("parts", [])
            held.setdefault("since", now)
            if any(d["id"] == art.envelope.id for d in docs):
                return None  # already held (a replay or a redelivery)
            docs.append(_part_doc(art, record))
            if len(docs) >= self.wanted[art.type]:
                state.delete(_BATCH + key)
                return Fired("batch", key, self._parts(docs))
            state.set(_BATCH + key, orjson.dumps(held))
            return None
        if state.get(_JOINED + key) is not None:
            self._extra(art, key, "the join already fired")
            return None
        held = _load(state.get(_JOIN + key))
        docs = held.setdefault("parts", [])
        held.setdefault("since", now)
        if any(d["id"] == art.envelope.id for d in docs):
            return None
        have = sum(1 for d in docs if d["type"] == art.type)
        if have >= self.wanted[art.type]:
            self._extra(art, key, f"it already has {have} {art.type}")
            return None
        docs.append(_part_doc(art, record))
        if all(
            sum(1 for d in docs if d["type"] == t) >= n for t, n in self.wanted.items()
        ):
            state.delete(_JOIN + key)
            state.set(_JOINED + key, orjson.dumps({"at": now}))
            return Fired("complete", key, self._parts(docs))
        state.set(_JOIN + key, orjson.dumps(held))
        return None

    def _extra(self, art: Artifact[BaseModel], key: str, why: str) -> None:
        """Drop an extra part, or raise for its dead letter."""
        if self.extras == "dead_letter":
            raise JoinError(f"extra {art.type} {art.envelope.id} for join key {key!r}: {why}")

    # -- timers ----------------------------------------------------------------------------
    def due(self, state: Mapping[str, bytes], now: float) -> list[str]:
        """Keys (join or batch keys, or ``bb.joined:`` markers to forget) whose time is up."""
        out: list[str] = []
        for name, raw in state.items():
            if name.startswith(_JOINED):
                if orjson.loads(raw)["at"] + self.done_ttl_s <= now:
                    out.append(name)
            elif (
                (name.startswith(_JOIN) or name.startswith(_BATCH))
                and self.timeout_s
                and orjson.loads(raw)["since"] + self.timeout_s <= now
            ):
                out.append(name)
        return out

    @staticmethod
    def order_key_of(state_key: str) -> str:
        """The order key a state key of :meth:`due` belongs to."""
        return state_key.split(":", 1)[1]

    def take(self, state_key: str, state: KeyedState, now: float) -> Fired | None:
        """Remove what ``state_key`` holds and say what fires (None: a marker forgotten)."""
        raw = state.get(state_key)
        if raw is None:
            return None
        key = self.order_key_of(state_key)
        state.delete(state_key)
        if state_key.startswith(_JOINED):
            return None
        docs = orjson.loads(raw)["parts"]
        if state_key.startswith(_JOIN):
            state.set(_JOINED + key, orjson.dumps({"at": now}))
            return Fired("timeout", key, self._parts(docs))
        return Fired("batch", key, self._parts(docs))

    def view(self, fired: Fired) -> JoinSet | Batch[BaseModel]:
        """The handler's view of what fired: a :class:`JoinSet` or a :class:`Batch`."""
        if self.kind == "join":
            assert self.registry is not None
            return JoinSet(fired.key, fired.parts, self.wanted, self.registry)
        return Batch(fired.key, fired.parts)

    def _parts(self, docs: list[dict[str, Any]]) -> list[Part]:
        assert self.registry is not None
        parts = []
        for doc in docs:
            record = _part_record(doc)
            parts.append(Part(decode(record, self.registry), record))
        return parts


def build_wanted(
    consumes: Mapping[type[BaseModel], int], registry: TypeRegistry
) -> tuple[list[ArtifactType], dict[str, int]]:
    """The consumed types and the count wanted of each (each at least 1)."""
    types: list[ArtifactType] = []
    wanted: dict[str, int] = {}
    for model, count in consumes.items():
        art_type = registry.of(model)
        if count < 1:
            raise AgentError(f"a join needs at least 1 {art_type.name}, got {count}")
        types.append(art_type)
        wanted[art_type.name] = count
    return types, wanted


def _load(raw: bytes | None) -> dict[str, Any]:
    return orjson.loads(raw) if raw else {}


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def _part_doc(art: Artifact[BaseModel], record: Record) -> dict[str, Any]:
    return {
        "id": art.envelope.id,
        "type": art.type,
        "topic": record.topic,
        "p": record.partition,
        "o": record.offset,
        "k": _b64(record.key),
        "v": _b64(record.value),
        "h": [[name, _b64(value)] for name, value in record.headers],
        "ts": record.timestamp,
    }


def _part_record(doc: dict[str, Any]) -> Record:
    return Record(
        doc["topic"],
        doc["p"],
        doc["o"],
        _unb64(doc["k"]),
        _unb64(doc["v"]),
        tuple((name, cast("bytes", _unb64(value))) for name, value in doc["h"]),
        doc["ts"],
    )
