"""How a record is laid out in a stream entry, and how offsets map to entry IDs.

Entries are appended with ``XADD <stream> 0-* ...``: Redis (7.0 and later) gives an explicit
millisecond part of 0 the next sequence number, so a partition's entries are ``0-1``, ``0-2``,
… with no gaps, and entry ``0-(n+1)`` is offset ``n``. Offsets are dense, as the processing loop
expects (offset n+1 follows n), and an offset is known from the entry ID alone.

Fields: ``k`` the key and ``v`` the value (each left out when None), ``h`` the headers
(length-prefixed name/value pairs, order and repeats kept), ``t`` the append time in ms.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from blackboard.records import Headers, OutgoingRecord, Record

_PAIR = struct.Struct(">HI")


def entry_id(offset: int) -> str:
    """The ID of the entry at ``offset``."""
    return f"0-{offset + 1}"


def after(offset: int) -> str:
    """An exclusive lower bound: IDs greater than it are offsets ``offset`` and later."""
    return f"0-{offset}"


def offset_of(entry: bytes | str) -> int:
    """The offset of entry ID ``0-(n+1)``."""
    if isinstance(entry, bytes):  # int() parses ASCII digits in bytes: no decoding
        return int(entry.partition(b"-")[2]) - 1
    return int(entry.partition("-")[2]) - 1


def text(raw: bytes | str) -> str:
    """A reply (bytes) as text."""
    return raw.decode() if isinstance(raw, bytes) else raw


def encode_headers(headers: Headers) -> bytes:
    """Headers as one field value (names and values length-prefixed, order kept)."""
    pack = _PAIR.pack
    parts: list[bytes] = []
    add = parts.append
    for name, value in headers:
        raw = name.encode()
        add(pack(len(raw), len(value)))
        add(raw)
        add(value)
    return b"".join(parts)


def decode_headers(blob: bytes) -> Headers:
    """The inverse of :func:`encode_headers`."""
    headers: list[tuple[str, bytes]] = []
    add = headers.append
    unpack = _PAIR.unpack_from
    pos, end = 0, len(blob)
    while pos < end:
        name_len, value_len = unpack(blob, pos)
        pos += 6  # _PAIR.size
        mid = pos + name_len
        pos = mid + value_len
        add((blob[mid - name_len : mid].decode(), blob[mid:pos]))
    return tuple(headers)


def entry_fields(rec: OutgoingRecord, now_ms: int) -> dict[bytes, bytes]:
    """The stream entry fields of ``rec``."""
    fields: dict[bytes, bytes] = {}
    if rec.key is not None:
        fields[b"k"] = rec.key
    if rec.value is not None:
        fields[b"v"] = rec.value
    headers = rec.wire_headers()
    if headers:
        fields[b"h"] = encode_headers(headers)
    fields[b"t"] = str(now_ms).encode()
    return fields


def record_from(topic: str, partition: int, entry: bytes | str, fields: Any) -> Record:
    """The record of one entry; ``fields`` as redis-py parses them (a mapping) or as a script
    returns them (a flat list of names and values)."""
    found: Mapping[bytes, bytes]
    if isinstance(fields, Mapping):
        found = fields
    else:  # names and values paired straight from the flat list, without slicing it
        pairs = iter(fields)
        found = dict(zip(pairs, pairs, strict=True))
    blob = found.get(b"h")
    return Record(
        topic,
        partition,
        offset_of(entry),
        found.get(b"k"),
        found.get(b"v"),
        decode_headers(blob) if blob else (),
        int(found.get(b"t", b"0")) / 1000.0,
    )
