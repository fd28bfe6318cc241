"""Joins and batches: agents that wait for several artifacts before their handler runs.

A *join* holds the parts that arrived for a join key (default: the correlation id) until it has
the count of each type its spec asks for, then hands them to the handler as a :class:`JoinSet`;
a partial set older than ``timeout_s`` goes to ``on_timeout`` or to the dead-letter topic. A
*batch* holds records of one type (per type and key, default: one batch per type and
partition) until it has that type's ``max_records`` of them or the first is its ``max_wait_ms``
old (:class:`scheduler.batching.BatchControl`), then hands them over as a :class:`Batch`.

Everything held lives in the agent's keyed state, written in the same atomic commit as the
offsets of the records that changed it, so a worker killed mid-join or mid-batch loses nothing
and fires nothing twice: the next owner of the partition restores the state with the offsets.
Parts are kept as their records (key, value and headers byte-for-byte), so a timed-out part is
dead-lettered exactly as it was read. State keys (all under ``bb.``):

- ``bb.join:<key>`` → ``{"since": t, "parts": [part, ...]}``; ``bb.joined:<key>`` → when it
  fired (later parts of that key are extras), forgotten after ``done_ttl_s``;
- ``bb.batch:<key>`` → ``{"since": t, "parts": [part, ...]}`` for an agent batching one type;
  ``bb.batch/<type>/<key>`` for one batching several (type names hold no ``/``), so each type's
  batch has its own parts and window.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import orjson
from pydantic import BaseModel

from agents.collected import Batch, JoinSet, Part
from blackboard.artifacts import Artifact, ArtifactType, Envelope, TypeRegistry
from blackboard.errors import AgentError, JoinError
from blackboard.records import Record, partition_for
from blackboard.wire import decode
from scheduler.batching import BatchControl, BatchOverride, Release

if TYPE_CHECKING:
    from agents.context import KeyedState

M = TypeVar("M", bound=BaseModel)
KeyFn = Callable[[BaseModel, Envelope], str]
Extras = Literal["drop", "dead_letter"]

_JOIN = "bb.join:"
_JOINED = "bb.joined:"
_BATCH = "bb.batch:"
_TYPED_BATCH = "bb.batch/"


def correlation_key(payload: BaseModel, envelope: Envelope) -> str:
    """The default join key: the artifact's correlation id."""
    return envelope.correlation_id


@dataclass(frozen=True, slots=True)
class Fired:
    """What a collector hands to the handler: ``why`` is complete, timeout or batch; a batch
    says its ``type`` and whether it was ``full`` or its window closed; ``since`` is when its
    first part was held (on the collector's clock)."""

    why: Literal["complete", "timeout", "batch"]
    key: str
    parts: list[Part]
    type: str | None = None
    since: float | None = None
    full: bool = False


@dataclass(frozen=True, slots=True)
class Collector:
    """How a join or batch agent holds artifacts. Built by :meth:`agents.App.join` and
    :meth:`agents.App.batch`.

    Attributes:
        kind: "join" or "batch".
        wanted: join: type name → parts wanted; batch: type name → its ``max_records``.
        key: the join or batch key of an artifact.
        timeout_s: join: how long a partial set waits; batch: the longest window, in seconds.
        extras: join: what to do with a part beyond its type's count.
        on_timeout: join: handler of a timed-out partial set (None: dead-letter its parts).
        done_ttl_s: join: how long a fired key counts later parts as extras.
        co_partitioned: join keys must map to the record's partition.
        controls: batch: type name → its size and window.
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
    controls: Mapping[str, BatchControl] = field(default_factory=dict)

    @classmethod
    def batching(
        cls, controls: Mapping[str, BatchControl], key: KeyFn, registry: TypeRegistry
    ) -> Collector:
        """A batch collector: type name → its size and window."""
        return cls(
            "batch",
            {t: c.max_records for t, c in controls.items()},
            key,
            max(c.window_s for c in controls.values()),
            registry=registry,
            controls=dict(controls),
        )

    def overridden(self, overrides: Mapping[str, BatchOverride]) -> Collector:
        """This batch collector with an operator's overrides (type name → override) applied;
        held state is kept as it is (state keys do not depend on the controls)."""
        controls = dict(self.controls)
        for name, override in overrides.items():
            controls[name] = override.apply(controls[name])
        return replace(
            self,
            wanted={t: c.max_records for t, c in controls.items()},
            timeout_s=max(c.window_s for c in controls.values()),
            controls=controls,
        )

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
            state_key = self._batch_key(art.type, key)
            held = _load(state.get(state_key))
            docs = held.setdefault("parts", [])
            since = held.setdefault("since", now)
            if any(d["id"] == art.envelope.id for d in docs):
                return None  # already held (a replay or a redelivery)
            docs.append(_part_doc(art, record))
            if len(docs) >= self.wanted[art.type]:
                state.delete(state_key)
                return Fired("batch", key, self._parts(docs), art.type, since, full=True)
            state.set(state_key, orjson.dumps(held))
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
        if all(sum(1 for d in docs if d["type"] == t) >= n for t, n in self.wanted.items()):
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
            elif name.startswith(_JOIN):
                if self.timeout_s and orjson.loads(raw)["since"] + self.timeout_s <= now:
                    out.append(name)
            elif name.startswith((_BATCH, _TYPED_BATCH)):
                held = orjson.loads(raw)
                control = self.controls.get(self._batch_type(name, held))
                # A type the agent no longer batches (held before a code change): release now.
                if control is None or held["since"] + control.window_s <= now:
                    out.append(name)
        return out

    @staticmethod
    def order_key_of(state_key: str) -> str:
        """The order key a state key of :meth:`due` belongs to."""
        if state_key.startswith(_TYPED_BATCH):
            return state_key[len(_TYPED_BATCH) :].split("/", 1)[1]
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
        held = orjson.loads(raw)
        docs = held["parts"]
        if state_key.startswith(_JOIN):
            state.set(_JOINED + key, orjson.dumps({"at": now}))
            return Fired("timeout", key, self._parts(docs), since=held["since"])
        art_type = self._batch_type(state_key, held)
        return Fired("batch", key, self._parts(docs), art_type, held["since"])

    def view(self, fired: Fired) -> JoinSet | Batch[BaseModel]:
        """The handler's view of what fired: a :class:`JoinSet` or a :class:`Batch`."""
        if self.kind == "join":
            assert self.registry is not None
            return JoinSet(fired.key, fired.parts, self.wanted, self.registry)
        return Batch(fired.key, fired.parts, fired.type or "")

    @staticmethod
    def release(fired: Fired, now: float) -> Release | None:
        """The admission decision of a batch or timed-out join (None for a complete join,
        whose record keeps the scheduling policy's decision)."""
        wait_ms = (now - fired.since) * 1000.0 if fired.since is not None else 0.0
        if fired.why == "batch":
            why: Literal["full", "window"] = "full" if fired.full else "window"
            return Release("batch", fired.type, len(fired.parts), why, wait_ms)
        if fired.why == "timeout":
            return Release("join", None, len(fired.parts), "timeout", wait_ms)
        return None

    def _batch_key(self, art_type: str, key: str) -> str:
        if len(self.wanted) == 1:  # the single-type form keeps its original state key
            return _BATCH + key
        return f"{_TYPED_BATCH}{art_type}/{key}"

    def _batch_type(self, state_key: str, held: Mapping[str, Any]) -> str:
        if state_key.startswith(_TYPED_BATCH):
            return state_key[len(_TYPED_BATCH) :].split("/", 1)[0]
        if len(self.wanted) == 1:
            return next(iter(self.wanted))
        parts = held.get("parts") or [{}]
        return str(parts[0].get("type", ""))

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
