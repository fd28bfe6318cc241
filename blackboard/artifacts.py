"""Artifact types, the registry that names them, and the envelope around every payload.

An artifact type is a Pydantic v2 model registered under a stable name and a schema version::

    @artifact("research.Idea", version=1)
    class Idea(BaseModel):
        title: str

Every artifact on the blackboard is an :class:`Artifact`: an :class:`Envelope` (id,
correlation id, causes, partition key, tenant, producer, time, trace context) plus the payload.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from blackboard.errors import DuplicateTypeError, InvalidArtifactError, UnknownTypeError

M = TypeVar("M", bound=BaseModel)

#: Namespace of the deterministic output ids (UUIDv5).
OUTPUT_ID_NAMESPACE = uuid.UUID("6f1c0a52-4c1e-5b7e-9d35-0b8f5d2b6a10")
EXTERNAL_PRODUCER = "external"
DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class ArtifactType:
    """A registered artifact type: its name, schema version and model."""

    name: str
    version: int
    model: type[BaseModel]

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of the payload, with the type name and version added."""
        schema = self.model.model_json_schema()
        schema["x-blackboard-type"] = self.name
        schema["x-blackboard-version"] = self.version
        return schema

    def validate_payload(self, data: Any) -> BaseModel:
        """Validate a Python object (e.g. parsed JSON) into the model.

        Raises:
            InvalidArtifactError: with pydantic's field errors.
        """
        from pydantic import ValidationError

        try:
            return self.model.model_validate(data)
        except ValidationError as exc:
            raise InvalidArtifactError(self.name, _errors(exc)) from exc


def _errors(exc: Any) -> list[dict[str, object]]:
    return [dict(e) for e in exc.errors(include_url=False, include_context=False)]


class TypeRegistry:
    """Artifact types by name and version, and by model class."""

    def __init__(self) -> None:
        self._by_name: dict[str, dict[int, ArtifactType]] = {}
        self._by_model: dict[type[BaseModel], ArtifactType] = {}

    def register(self, model: type[M], name: str, version: int = 1) -> ArtifactType:
        """Register ``model`` as type ``name`` at schema ``version``.

        Registering the same model again under the same name and version is a no-op.

        Raises:
            DuplicateTypeError: the name and version belong to another model, or the model is
                registered under another name.
        """
        if not name or any(c.isspace() for c in name) or "/" in name:
            raise ValueError(f"artifact type name {name!r} must be non-empty, no spaces or '/'")
        if version < 1:
            raise ValueError(f"schema version of {name} must be >= 1, got {version}")
        versions = self._by_name.setdefault(name, {})
        existing = versions.get(version)
        if existing is not None:
            if _same_model(existing.model, model):
                return existing
            raise DuplicateTypeError(
                f"artifact type {name} v{version} is already registered to "
                f"{existing.model.__module__}.{existing.model.__qualname__}"
            )
        previous = self._by_model.get(model)
        if previous is not None and (previous.name, previous.version) != (name, version):
            raise DuplicateTypeError(
                f"{model.__qualname__} is already registered as {previous.name} v{previous.version}"
            )
        art_type = ArtifactType(name=name, version=version, model=model)
        versions[version] = art_type
        self._by_model[model] = art_type
        return art_type

    def get(self, name: str, version: int | None = None) -> ArtifactType:
        """The type registered as ``name`` (the newest version when ``version`` is None).

        Raises:
            UnknownTypeError: no such name (or version); the message lists the known names.
        """
        versions = self._by_name.get(name)
        if not versions:
            known = ", ".join(sorted(self._by_name)) or "none registered"
            raise UnknownTypeError(f"unknown artifact type {name!r} (known: {known})")
        if version is None:
            return versions[max(versions)]
        found = versions.get(version)
        if found is None:
            raise UnknownTypeError(
                f"artifact type {name!r} has no schema version {version} "
                f"(registered: {sorted(versions)})"
            )
        return found

    def for_decoding(self, name: str, version: int) -> ArtifactType:
        """The model to read a record of ``name`` v``version`` with: that version if known,
        else the newest registered one (it may still validate)."""
        versions = self._by_name.get(name)
        if versions and version in versions:
            return versions[version]
        return self.get(name)

    def of(self, model_or_type: type[BaseModel] | str) -> ArtifactType:
        """The registered type of a model class (or of a type name)."""
        if isinstance(model_or_type, str):
            return self.get(model_or_type)
        found = self._by_model.get(model_or_type)
        if found is None:
            raise UnknownTypeError(
                f"{model_or_type.__qualname__} is not a registered artifact type; "
                "decorate it with @artifact(name, version)"
            )
        return found

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[ArtifactType]:
        return iter(self.types())

    def types(self) -> list[ArtifactType]:
        """Every registered type, sorted by name then version."""
        return [
            self._by_name[name][version]
            for name in sorted(self._by_name)
            for version in sorted(self._by_name[name])
        ]

    def merge(self, other: TypeRegistry) -> None:
        """Register every type of ``other`` here too."""
        for t in other.types():
            self.register(t.model, t.name, t.version)


def _same_model(a: type[BaseModel], b: type[BaseModel]) -> bool:
    # A module imported twice (e.g. as __main__ and by name) yields two equal classes.
    return a is b or (
        a.__qualname__ == b.__qualname__ and a.model_fields.keys() == b.model_fields.keys()
    )


#: The registry ``@artifact`` writes to unless given another one.
default_registry = TypeRegistry()


def artifact(
    name: str, version: int = 1, *, registry: TypeRegistry | None = None
) -> Callable[[type[M]], type[M]]:
    """Class decorator registering a Pydantic model as artifact type ``name`` v``version``."""

    def register(model: type[M]) -> type[M]:
        (registry or default_registry).register(model, name, version)
        return model

    return register


@dataclass(slots=True)
class Envelope:
    """What the blackboard knows about an artifact besides its payload (docs/DESIGN.md §1).

    Read-only by convention (not a frozen dataclass: a frozen one costs ~5x as much to build,
    and two are built per record an agent handles)."""

    id: str
    type: str
    schema_version: int
    correlation_id: str
    causation_ids: tuple[str, ...] = ()
    partition_key: str = ""
    tenant: str = DEFAULT_TENANT
    produced_by: str = EXTERNAL_PRODUCER
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    traceparent: str | None = None


@dataclass(slots=True)
class Artifact(Generic[M]):
    """An envelope and its validated payload (read-only by convention, like the envelope)."""

    envelope: Envelope
    payload: M

    @property
    def id(self) -> str:
        """The artifact id."""
        return self.envelope.id

    @property
    def type(self) -> str:
        """The artifact type name."""
        return self.envelope.type


def _format_uuid(raw: bytes, version: int) -> str:
    """RFC 4122 text of 16 bytes with the version and variant bits set (what ``uuid.UUID``
    gives, without building the object: ids are made on the hot path)."""
    h = raw[:16].hex()
    return f"{h[:8]}-{h[8:12]}-{version:x}{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


#: The first hex digit of the clock-seq field with the RFC 4122 variant bits (10xx) set.
_VARIANT = {f"{n:x}": f"{(n & 0x3) | 0x8:x}" for n in range(16)}
_NAMESPACE_BYTES = OUTPUT_ID_NAMESPACE.bytes
_NAMESPACE_HASH = hashlib.sha1(_NAMESPACE_BYTES)


def new_id() -> str:
    """A fresh random artifact id (UUIDv4) for artifacts published from outside agents."""
    return _format_uuid(os.urandom(16), 4)


def output_id(agent: str, input_ids: Sequence[str], index: int) -> str:
    """The deterministic id (UUIDv5) of ``agent``'s ``index``-th output for the given inputs.

    The same agent, inputs and index always give the same id, so a re-run after a crash
    republishes the same ids and consumers can dedupe on them.
    """
    inputs = input_ids[0] if len(input_ids) == 1 else ",".join(sorted(input_ids))
    digest = _NAMESPACE_HASH.copy()
    digest.update(f"{agent}\x1f{inputs}\x1f{index}".encode())
    return _format_uuid(digest.digest(), 5)


def make_envelope(
    art_type: ArtifactType,
    *,
    artifact_id: str | None = None,
    correlation_id: str | None = None,
    causation_ids: Sequence[str] = (),
    partition_key: str | None = None,
    tenant: str = DEFAULT_TENANT,
    produced_by: str = EXTERNAL_PRODUCER,
    traceparent: str | None = None,
    created_at: datetime | None = None,
) -> Envelope:
    """Build an envelope, filling the defaults of docs/DESIGN.md §1.

    The id defaults to a fresh random one, the correlation id to the artifact's own id and
    the partition key to the correlation id.
    """
    art_id = artifact_id or new_id()
    corr = correlation_id or art_id
    return Envelope(
        id=art_id,
        type=art_type.name,
        schema_version=art_type.version,
        correlation_id=corr,
        causation_ids=tuple(causation_ids),
        partition_key=partition_key if partition_key is not None else corr,
        tenant=tenant,
        produced_by=produced_by,
        created_at=created_at or datetime.now(UTC),
        traceparent=traceparent,
    )
