"""Artifact registry, envelopes and the wire form."""

from __future__ import annotations

import orjson
import pytest
from pydantic import BaseModel

from blackboard.artifacts import TypeRegistry, artifact, make_envelope, output_id
from blackboard.errors import (
    DecodeError,
    DuplicateTypeError,
    InvalidArtifactError,
    UnknownTypeError,
)
from blackboard.records import Record
from blackboard.wire import decode, encode_headers, encode_payload

reg = TypeRegistry()


@artifact("w.Note", version=2, registry=reg)
class Note(BaseModel):
    text: str
    stars: int = 0


def _record(value: bytes, headers: tuple[tuple[str, bytes], ...]) -> Record:
    return Record("bb.w.Note", 0, 0, b"k", value, headers, 0.0)


def test_registry_lists_types_with_json_schema() -> None:
    [t] = reg.types()
    assert (t.name, t.version, t.model) == ("w.Note", 2, Note)
    schema = t.json_schema()
    assert schema["x-blackboard-type"] == "w.Note"
    assert set(schema["properties"]) == {"text", "stars"}


def test_registry_refuses_a_second_model_under_a_taken_name() -> None:
    class Other(BaseModel):
        x: int

    with pytest.raises(DuplicateTypeError, match=r"w\.Note v2"):
        reg.register(Other, "w.Note", 2)
    with pytest.raises(UnknownTypeError, match=r"known: w\.Note"):
        reg.get("w.Nope")


def test_output_ids_are_deterministic() -> None:
    assert output_id("a", ["x", "y"], 0) == output_id("a", ["y", "x"], 0)
    assert output_id("a", ["x"], 0) != output_id("a", ["x"], 1)
    assert output_id("a", ["x"], 0) != output_id("b", ["x"], 0)


def test_wire_form_is_plain_json_with_string_headers() -> None:
    env = make_envelope(reg.of(Note), correlation_id="c", causation_ids=["p1", "p2"], tenant="t")
    value = encode_payload(Note(text="hi", stars=3))
    assert orjson.loads(value) == {"text": "hi", "stars": 3}
    headers = encode_headers(env)
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers)
    assert dict(headers)["bb.causation_ids"] == b"p1,p2"
    art = decode(_record(value, headers), reg)
    assert art.payload == Note(text="hi", stars=3)
    assert art.envelope.causation_ids == ("p1", "p2")


def test_a_plain_producers_record_with_minimal_headers_is_accepted() -> None:
    art = decode(_record(b'{"text": "from kcat"}', (("bb.id", b"x1"), ("bb.type", b"w.Note"))), reg)
    assert (
        art.id == "x1" and art.envelope.correlation_id == "x1" and art.envelope.schema_version == 1
    )
    assert art.payload == Note(text="from kcat")


def test_decode_errors_name_what_is_wrong() -> None:
    with pytest.raises(DecodeError, match=r"no bb\.id header"):
        decode(_record(b"{}", ()), reg)
    with pytest.raises(DecodeError, match="not valid JSON"):
        decode(_record(b"{oops", (("bb.id", b"1"), ("bb.type", b"w.Note"))), reg)
    with pytest.raises(DecodeError, match="unknown artifact type"):
        decode(_record(b"{}", (("bb.id", b"1"), ("bb.type", b"w.Else"))), reg)
    with pytest.raises(InvalidArtifactError, match="text: Field required"):
        decode(_record(b'{"stars": 1}', (("bb.id", b"1"), ("bb.type", b"w.Note"))), reg)


def test_ids_are_standard_uuids() -> None:
    import uuid

    from blackboard.artifacts import OUTPUT_ID_NAMESPACE, new_id

    key = "\x1f".join(("agent", "a,b", "3"))
    assert output_id("agent", ["b", "a"], 3) == str(uuid.uuid5(OUTPUT_ID_NAMESPACE, key))
    fresh = uuid.UUID(new_id())
    assert fresh.version == 4 and fresh.variant == uuid.RFC_4122


def test_envelope_headers_round_trip_and_bad_ones_are_decode_errors() -> None:
    env = make_envelope(
        reg.of(Note), correlation_id="c", tenant="acme", produced_by="writer", traceparent="00-x"
    )
    value = encode_payload(Note(text="hi"))
    # Another header, even one that is not text, is the producer's business.
    headers = (*encode_headers(env), ("app.blob", b"\xff\x00"))
    got = decode(_record(value, headers), reg).envelope
    assert (got.id, got.type, got.schema_version, got.tenant, got.produced_by) == (
        env.id,
        "w.Note",
        2,
        "acme",
        "writer",
    )
    assert (got.created_at, got.traceparent, got.correlation_id) == (env.created_at, "00-x", "c")
    for name, bad in (("bb.tenant", b"\xff"), ("bb.type", None)):
        broken = tuple((k, bad if k == name else v) for k, v in encode_headers(env))
        with pytest.raises(DecodeError, match="empty or not UTF-8"):
            decode(_record(value, broken), reg)  # type: ignore[arg-type]
    bad_version = (("bb.id", b"1"), ("bb.type", b"w.Note"), ("bb.schema_version", b"x"))
    with pytest.raises(DecodeError, match="malformed envelope header"):
        decode(_record(value, bad_version), reg)
