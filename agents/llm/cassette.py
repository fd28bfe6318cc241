"""Record and replay of model calls: a JSON-lines file of normalized answers keyed by a hash
of the canonical request and an occurrence index, so repeated identical requests replay in
the order they were made. Whole results are kept (finish reason, usage, cost, raw data) and
failures too, so truncation, re-ask and 429 paths replay exactly; a request never recorded
fails closed in replay mode (:class:`~blackboard.errors.CassetteMissError`).

One process records a cassette (its first answer starts the file afresh); any number replay
it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import orjson

from agents.llm.adapter import llm_error
from agents.llm.result import LLMRequest, LLMResult
from agents.llm.settings import CassetteMode
from blackboard.errors import CassetteMissError, ConfigError, LLMError


class Cassette:
    """One cassette file in one mode (see the module docstring).

    Raises:
        ConfigError: replay mode and the file is missing or not a cassette.
    """

    def __init__(self, path: Path, mode: CassetteMode) -> None:
        self.path = path
        self.mode = mode
        self._seen: Counter[str] = Counter()
        self._entries: dict[tuple[str, int], dict[str, Any]] = {}
        self._out: IO[bytes] | None = None
        self.hits = 0
        self.recorded = 0
        if mode == "replay":
            self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            raise ConfigError(f"LLM cassette {self.path} does not exist (replay mode)")
        for number, line in enumerate(self.path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = orjson.loads(line)
                self._entries[(entry["key"], int(entry["n"]))] = entry
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                raise ConfigError(
                    f"LLM cassette {self.path}:{number} is not a cassette entry"
                ) from None

    async def call(
        self, provider: str, request: LLMRequest, make: Callable[[], Awaitable[LLMResult]]
    ) -> LLMResult:
        """The answer to ``request``: replayed, or made with ``make()`` (and recorded).

        Raises:
            CassetteMissError: replay mode and the request was never recorded.
            LLMError: the (recorded) call failed.
        """
        key = request.key(provider)
        n = self._seen[key]
        self._seen[key] += 1
        if self.mode == "replay":
            entry = self._entries.get((key, n))
            if entry is None:
                raise CassetteMissError(
                    f"cassette {self.path.name} has no answer to request {key[:12]} "
                    f"(occurrence {n + 1}) of model {provider}:{request.model}"
                )
            self.hits += 1
            if "error" in entry:
                raise _error(entry["error"])
            return LLMResult.model_validate(entry["result"])
        if self.mode == "off":
            return await make()
        try:
            result = await make()
        except LLMError as exc:
            self._write(key, n, provider, request, error=_error_data(exc))
            raise
        self._write(key, n, provider, request, result=result.model_dump(mode="json"))
        return result

    def _write(self, key: str, n: int, provider: str, request: LLMRequest, **what: Any) -> None:
        if self._out is None:
            # A recording starts the file afresh: occurrences count from 0 in each process, so
            # appending a second run would give two answers the same (key, occurrence).
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = self.path.open("wb")
        entry = {"key": key, "n": n, "provider": provider, "model": request.model, **what}
        self._out.write(orjson.dumps(entry) + b"\n")
        self._out.flush()
        self.recorded += 1

    def close(self) -> None:
        """Close the file (recording)."""
        if self._out is not None:
            self._out.close()
            self._out = None


def _error_data(exc: LLMError) -> dict[str, Any]:
    return {
        "message": str(exc),
        "kind": exc.kind,
        "retry_after_s": exc.retry_after_s,
        "status": exc.status,
        "provider": exc.provider,
    }


def _error(data: dict[str, Any]) -> LLMError:
    error = llm_error(
        "replayed", data["kind"], provider=data.get("provider", ""), status=data.get("status")
    )
    error.args = (data["message"],)
    error.retry_after_s = data.get("retry_after_s")
    return error
