"""The audit log: one JSON line per action (replay, purge, dry runs and refusals included)."""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson


class AuditLog:
    """Appends actions to a JSON-lines file (created with its directory on first write).

    Args:
        path: the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, action: str, *, outcome: str, client: str | None, **details: Any) -> None:
        """Record one action: what, with which outcome (``ok``, ``dry_run``, ``refused``,
        ``error``), from which client, and its details (filter, ids affected)."""
        entry = {"ts": time.time(), "action": action, "outcome": outcome, "client": client}
        line = orjson.dumps({**entry, **details}) + b"\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as f:
                f.write(line)

    def tail(self, limit: int = 100) -> list[dict[str, Any]]:
        """The last ``limit`` entries, newest first."""
        with self._lock:
            if not self.path.exists():
                return []
            with self.path.open("rb") as f:
                lines = deque(f, maxlen=limit)
        return [orjson.loads(line) for line in reversed(lines) if line.strip()]
