"""A file that keeps an embedded store between processes (``memory:///path``).

The file is read on open and written on close (atomically, by rename). While a process has it
open, an exclusive lock keeps a second process out with a clear error. Only plain data is
pickled, and loading refuses anything but plain data.
"""

from __future__ import annotations

import fcntl
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from blackboard.errors import ConfigError
from blackboard.records import CommittedOffset, TopicPartition

if TYPE_CHECKING:
    from blackboard.stores.memory.log import Entry

_FORMAT = 1


@dataclass(slots=True)
class Snapshot:
    """The contents of a store file."""

    topics: dict[str, list[list[Entry]]]
    compacted: set[str]
    committed: dict[str, dict[TopicPartition, CommittedOffset]]
    state: dict[str, dict[int, dict[str, bytes]]]


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"store file holds a {module}.{name}; only plain data is allowed"
        )


class SnapshotFile:
    """The store file at ``path`` and its lock."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._lock_file: IO[bytes] | None = None

    def lock(self) -> None:
        """Take the exclusive lock, or stop with a one-line error if another process has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path.with_name(self.path.name + ".lock"), "a+b")  # noqa: SIM115 - held until unlock()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(
                f"store file {self.path} is in use by another process; "
                "the embedded store serves one process at a time (use Kafka or Redis to share)"
            ) from None
        self._lock_file = handle

    def unlock(self) -> None:
        """Release the lock."""
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def load(self) -> Snapshot | None:
        """The stored contents, or None when the file does not exist yet."""
        if not self.path.exists():
            return None
        try:
            data = _PlainUnpickler(io.BytesIO(self.path.read_bytes())).load()
            if data.get("format") != _FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            topics: dict[str, list[list[Entry]]] = {
                name: [
                    [(k, v, tuple(map(tuple, h)), ts, None) for k, v, h, ts in log] for log in parts
                ]
                for name, parts in data["topics"].items()
            }
            committed = {
                group: {
                    TopicPartition(t, p): CommittedOffset(o, m)
                    for (t, p), (o, m) in offsets.items()
                }
                for group, offsets in data["committed"].items()
            }
            return Snapshot(topics, set(data["compacted"]), committed, data["state"])
        except (pickle.UnpicklingError, ValueError, KeyError, TypeError, EOFError) as exc:
            raise ConfigError(
                f"store file {self.path} is not a blackboard store file: {exc}"
            ) from exc

    def save(
        self,
        topics: dict[str, list[list[Entry]]],
        compacted: set[str],
        committed: dict[str, dict[TopicPartition, CommittedOffset]],
        state: dict[str, dict[int, dict[str, bytes]]],
    ) -> None:
        """Write the contents atomically (temporary file, then rename)."""
        from blackboard.stores.memory.log import records_of

        data = {
            "format": _FORMAT,
            "topics": {
                name: [
                    [
                        (r.key, r.value, list(r.headers), r.timestamp)
                        for r in records_of(name, p, 0, log)
                    ]
                    for p, log in enumerate(parts)
                ]
                for name, parts in topics.items()
            },
            "compacted": sorted(compacted),
            "committed": {
                group: {
                    (tp.topic, tp.partition): (c.offset, c.metadata) for tp, c in offsets.items()
                }
                for group, offsets in committed.items()
            },
            "state": state,
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, self.path)
