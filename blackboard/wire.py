"""The wire form of an artifact (DESIGN.md §1): key = partition key, value = JSON payload,
envelope fields as UTF-8 string headers. A plain Kafka consumer sees clean JSON, and a record
that a plain producer writes with these headers is accepted."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ValidationError

from blackboard.artifacts import Artifact, ArtifactType, Envelope, TypeRegistry
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


def encode_payload(payload: BaseModel) -> bytes:
    """The payload as compact JSON bytes (pydantic-core's serializer: same JSON as orjson
    would give for a model, without building an intermediate dict)."""
    return payload.__pydantic_serializer__.to_json(payload)


def encode_headers(env: Envelope) -> Headers:
    """The envelope as ``bb.*`` string headers (and ``traceparent`` when set)."""
    headers: list[tuple[str, bytes]] = [
        (H_ID, env.id.encode()),
        (H_TYPE, env.type.encode()),
        (H_SCHEMA_VERSION, str(env.schema_version).encode()),
        (H_CORRELATION_ID, env.correlation_id.encode()),
        (H_CAUSATION_IDS, ",".join(env.causation_ids).encode()),
        (H_TENANT, env.tenant.encode()),
        (H_PRODUCED_BY, env.produced_by.encode()),
        (H_CREATED_AT, env.created_at.isoformat().encode()),
    ]
    if env.traceparent:
        headers.append((H_TRACEPARENT, env.traceparent.encode()))
    return tuple(headers)


def decode_envelope(record: Record) -> Envelope:
    """Read the envelope from a record's headers.

    Raises:
        DecodeError: a required header is missing or malformed.
    """
    found: dict[str, str] = {}
    try:
        for name, value in record.headers:
            found[name] = value.decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(
            f"header is not UTF-8 in {record.topic}[{record.partition}]@{record.offset}"
        ) from exc
    try:
        art_id = found[H_ID]
        type_name = found[H_TYPE]
    except KeyError as exc:
        raise DecodeError(
            f"record {record.topic}[{record.partition}]@{record.offset} has no {exc.args[0]} header"
        ) from exc
    try:
        version = int(found.get(H_SCHEMA_VERSION) or 1)
        created_raw = found.get(H_CREATED_AT)
        created = datetime.fromisoformat(created_raw) if created_raw else _record_time(record)
    except ValueError as exc:
        raise DecodeError(f"malformed envelope header on {art_id}: {exc}") from exc
    corr = found.get(H_CORRELATION_ID) or art_id
    causes = found.get(H_CAUSATION_IDS, "")
    key = record.key.decode(errors="replace") if record.key is not None else corr
    return Envelope(
        id=art_id,
        type=type_name,
        schema_version=version,
        correlation_id=corr,
        causation_ids=tuple(causes.split(",")) if causes else (),
        partition_key=key,
        tenant=found.get(H_TENANT) or "default",
        produced_by=found.get(H_PRODUCED_BY) or "external",
        created_at=created,
        traceparent=found.get(H_TRACEPARENT),
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
