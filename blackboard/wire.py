"""The wire form of an artifact (docs/DESIGN.md §1): key = partition key, value = JSON payload,
envelope fields as UTF-8 string headers. A plain Kafka consumer sees clean JSON, and a record
that a plain producer writes with these headers is accepted."""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from blackboard.artifacts import (
    DEFAULT_TENANT,
    EXTERNAL_PRODUCER,
    Artifact,
    ArtifactType,
    Envelope,
    TypeRegistry,
)
from blackboard.errors import DecodeError, InvalidArtifactError, UnknownTypeError
from blackboard.records import Headers, Record

H_ID = "bb.id"
H_TYPE = "bb.type"
H_SCHEMA_VERSION = "bb.schema_version"
H_CORRELATION_ID = "bb.correlation_id"
H_CAUSATION_IDS = "bb.causation_ids"
H_TENANT = "bb.tenant"
H_PRODUCED_BY = "bb.produced_by"
H_CREATED_AT = "bb.created_at"
H_TRACEPARENT = "traceparent"

_K = TypeVar("_K", str, int)


def encode_payload(payload: BaseModel) -> bytes:
    """The payload as compact JSON bytes (pydantic-core's serializer: same JSON as orjson
    would give for a model, without building an intermediate dict)."""
    return payload.__pydantic_serializer__.to_json(payload)


def encode_headers(env: Envelope) -> Headers:
    """The envelope as ``bb.*`` string headers (and ``traceparent`` when set)."""
    type_h = _TYPE_HEADERS.get(env.type) or _remember(_TYPE_HEADERS, H_TYPE, env.type)
    version_h = _VERSION_HEADERS.get(env.schema_version) or _remember(
        _VERSION_HEADERS, H_SCHEMA_VERSION, env.schema_version
    )
    tenant_h = _TENANT_HEADERS.get(env.tenant) or _remember(_TENANT_HEADERS, H_TENANT, env.tenant)
    producer_h = _PRODUCER_HEADERS.get(env.produced_by) or _remember(
        _PRODUCER_HEADERS, H_PRODUCED_BY, env.produced_by
    )
    headers = (
        (H_ID, env.id.encode()),
        type_h,
        version_h,
        (H_CORRELATION_ID, env.correlation_id.encode()),
        (H_CAUSATION_IDS, ",".join(env.causation_ids).encode()),
        tenant_h,
        producer_h,
        (H_CREATED_AT, env.created_at.isoformat().encode()),
    )
    if env.traceparent:
        return (*headers, (H_TRACEPARENT, env.traceparent.encode()))
    return headers


# The headers that repeat (type, schema version, tenant, producer), built once each: the same
# few values are on every record an agent or publisher writes.
_TYPE_HEADERS: dict[str, tuple[str, bytes]] = {}
_VERSION_HEADERS: dict[int, tuple[str, bytes]] = {}
_TENANT_HEADERS: dict[str, tuple[str, bytes]] = {}
_PRODUCER_HEADERS: dict[str, tuple[str, bytes]] = {}
_MAX_REMEMBERED = 4096


def _remember(cache: dict[_K, tuple[str, bytes]], name: str, value: _K) -> tuple[str, bytes]:
    if len(cache) >= _MAX_REMEMBERED:  # e.g. tenants without end: stay bounded
        cache.clear()
    header = cache[value] = (name, str(value).encode())
    return header


def decode_envelope(record: Record) -> Envelope:
    """Read the envelope from a record's headers (the last value of a repeated header wins).

    Raises:
        DecodeError: a required header is missing or malformed.
    """
    found = dict(record.headers)  # one C-level pass; only the envelope's headers are decoded
    try:
        art_id = found[H_ID].decode()
        type_name = found[H_TYPE].decode()
    except KeyError as exc:
        raise DecodeError(
            f"record {record.topic}[{record.partition}]@{record.offset} has no {exc.args[0]} header"
        ) from exc
    except (UnicodeDecodeError, AttributeError) as exc:
        raise _not_utf8(record) from exc
    try:
        version_raw = found.get(H_SCHEMA_VERSION)
        version = int(version_raw) if version_raw else 1
        created_raw = found.get(H_CREATED_AT)
        created = (
            datetime.fromisoformat(created_raw.decode()) if created_raw else _record_time(record)
        )
        corr_raw = found.get(H_CORRELATION_ID)
        causes_raw = found.get(H_CAUSATION_IDS)
        tenant_raw = found.get(H_TENANT)
        producer_raw = found.get(H_PRODUCED_BY)
        parent_raw = found.get(H_TRACEPARENT)
        corr = corr_raw.decode() if corr_raw else art_id
        causes = tuple(causes_raw.decode().split(",")) if causes_raw else ()
        tenant = tenant_raw.decode() if tenant_raw else DEFAULT_TENANT
        producer = producer_raw.decode() if producer_raw else EXTERNAL_PRODUCER
        parent = parent_raw.decode() if parent_raw is not None else None
    except (UnicodeDecodeError, AttributeError) as exc:
        raise _not_utf8(record) from exc
    except ValueError as exc:
        raise DecodeError(f"malformed envelope header on {art_id}: {exc}") from exc
    key = record.key.decode(errors="replace") if record.key is not None else corr
    return Envelope(
        art_id, type_name, version, corr, causes, key, tenant, producer, created, parent
    )


def _not_utf8(record: Record) -> DecodeError:
    return DecodeError(
        "an envelope header is empty or not UTF-8 in "
        f"{record.topic}[{record.partition}]@{record.offset}"
    )


def _record_time(record: Record) -> datetime:
    from datetime import UTC

    return datetime.fromtimestamp(record.timestamp, UTC)


def decode(record: Record, registry: TypeRegistry) -> Artifact[BaseModel]:
    """Decode and validate a record into an artifact.

    Raises:
        DecodeError: headers or JSON are malformed, or the type is unknown (DLQ stage
            ``deserialize``).
        InvalidArtifactError: well-formed JSON that does not validate (stage ``validate``).
    """
    env = record.envelope if record.envelope is not None else decode_envelope(record)
    try:
        art_type = registry.for_decoding(env.type, env.schema_version)
    except UnknownTypeError as exc:
        raise DecodeError(str(exc)) from exc
    return Artifact(env, decode_payload(art_type, record.value, env.id))


def decode_payload(art_type: ArtifactType, value: bytes | None, art_id: str) -> BaseModel:
    """Parse and validate a JSON payload (one pass, in pydantic-core)."""
    if value is None:
        raise DecodeError(f"artifact {art_id} has no value")
    try:
        return art_type.model.model_validate_json(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise DecodeError(
                f"artifact {art_id} value is not valid JSON: {errors[0]['msg']}"
            ) from exc
        raise InvalidArtifactError(art_type.name, [dict(e) for e in errors]) from exc
