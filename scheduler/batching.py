"""Batch controls per artifact type: how many records a batch holds and how long it waits, set
in code and overridable by operators at deploy time, and the admission decision a released
batch records.

In code, a batch agent names a :class:`BatchControl` per consumed type::

    @app.batch(consumes={Order: BatchControl(max_records=50, max_wait_ms=200),
                         Refund: BatchControl(10, 1000)})

Operators override them without touching code, per worker process, with
``blackboard worker … --batch Order=50:200ms`` or ``BLACKBOARD_BATCH="Order=50:200ms"``
(:class:`BatchSettings`; an explicit ``--batch`` replaces the variable, as values given in
code replace variables in :mod:`blackboard.envsettings`). An override is
``[AGENT/]TYPE=[SIZE][:WINDOW]``: TYPE is a registered type name (``shop.Order``), its last
dotted part (``Order``) or its model's class name; SIZE a whole number >= 1; WINDOW a number
with ``ms`` (the default unit), ``s`` or ``m``; either may be left out to keep the code's
value (``Order=50``, ``Order=:2s``); AGENT limits it to one agent. Entries are separated by
commas. A malformed entry, or a type no batch agent of the app consumes, stops start-up with
one :class:`~blackboard.errors.ConfigError` line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import NoDecode, SettingsConfigDict

from blackboard.envsettings import EnvSettings
from blackboard.errors import AgentError, ConfigError

_FORM = "[AGENT/]TYPE=SIZE:WINDOW, e.g. Order=50:200ms"
_ENTRY = re.compile(
    r"^(?:(?P<agent>[^/=\s]+)/)?(?P<type>[^/=\s]+)=(?P<size>[^:]*)(?::(?P<win>.*))?$"
)
_WINDOW = re.compile(r"^(?P<n>[0-9]*\.?[0-9]+)\s*(?P<unit>ms|s|m)?$")
_UNIT_MS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True, slots=True)
class BatchControl:
    """The size and window of one type's batches.

    Attributes:
        max_records: a batch is released once it holds this many records (``why=full``).
        max_wait_ms: ... or once its oldest record has waited this long (``why=window``).

    Raises:
        AgentError: ``max_records`` < 1 or ``max_wait_ms`` <= 0.
    """

    max_records: int = 100
    max_wait_ms: float = 1000.0

    def __post_init__(self) -> None:
        if self.max_records < 1 or not self.max_wait_ms > 0 or math.isinf(self.max_wait_ms):
            raise AgentError(
                "a batch needs max_records >= 1 and a finite max_wait_ms > 0, got "
                f"{self.max_records} and {self.max_wait_ms}"
            )

    @property
    def window_s(self) -> float:
        """``max_wait_ms`` in seconds."""
        return self.max_wait_ms / 1000.0

    def __str__(self) -> str:
        return f"{self.max_records}:{self.max_wait_ms:g}ms"


@dataclass(frozen=True, slots=True)
class BatchOverride:
    """One operator override: the type (and agent) it targets and what it replaces.

    Attributes:
        text: the entry as written (error messages quote it).
        type: the type as written (a registered name, its last dotted part or a class name).
        agent: the only agent it applies to (None: every batch agent consuming the type).
        max_records: the new size (None: the code's).
        max_wait_ms: the new window (None: the code's).
    """

    text: str
    type: str
    agent: str | None = None
    max_records: int | None = None
    max_wait_ms: float | None = None

    def apply(self, control: BatchControl) -> BatchControl:
        """``control`` with this override's values."""
        return BatchControl(
            control.max_records if self.max_records is None else self.max_records,
            control.max_wait_ms if self.max_wait_ms is None else self.max_wait_ms,
        )


def parse_override(text: str) -> BatchOverride:
    """Parse one ``[AGENT/]TYPE=[SIZE][:WINDOW]`` entry.

    Raises:
        ConfigError: it is malformed (one line quoting it and saying what is wrong).
    """
    entry = text.strip()
    m = _ENTRY.match(entry)
    if m is None:
        raise ConfigError(f"batch override {entry!r} is not {_FORM}")
    size_text, win_text = m["size"].strip(), (m["win"] or "").strip()
    if not size_text and not win_text:
        raise ConfigError(f"batch override {entry!r} sets neither a size nor a window ({_FORM})")
    size: int | None = None
    if size_text:
        if not size_text.isdigit() or int(size_text) < 1:
            raise ConfigError(
                f"batch override {entry!r}: size {size_text!r} is not a whole number >= 1"
            )
        size = int(size_text)
    window: float | None = None
    if win_text:
        w = _WINDOW.match(win_text)
        if w is None or float(w["n"]) <= 0:
            raise ConfigError(
                f"batch override {entry!r}: window {win_text!r} is not a duration > 0 "
                "(a number with ms, s or m; plain numbers are ms)"
            )
        window = float(w["n"]) * _UNIT_MS[w["unit"] or "ms"]
    return BatchOverride(entry, m["type"], m["agent"], size, window)


def parse_overrides(value: str | Sequence[str]) -> tuple[BatchOverride, ...]:
    """Parse comma-separated entries (one string, or several, e.g. repeated ``--batch``);
    empty entries are skipped.

    Raises:
        ConfigError: an entry is malformed, or one type (and agent) is named twice.
    """
    texts = [value] if isinstance(value, str) else list(value)
    out: list[BatchOverride] = []
    seen: dict[tuple[str | None, str], str] = {}
    for text in texts:
        for part in text.split(","):
            if not part.strip():
                continue
            override = parse_override(part)
            target = (override.agent, override.type)
            if target in seen:
                raise ConfigError(
                    f"batch overrides {seen[target]!r} and {override.text!r} name the same type"
                )
            seen[target] = override.text
            out.append(override)
    return tuple(out)


class BatchSettings(EnvSettings):
    """A worker's batch overrides, from ``--batch`` or ``BLACKBOARD_BATCH``."""

    model_config = SettingsConfigDict(env_prefix="BLACKBOARD_")
    what = "batch setting"

    batch: Annotated[tuple[BatchOverride, ...], NoDecode] = Field(
        default=(),
        description="batch sizes and windows per type, entries `[AGENT/]TYPE=[SIZE][:WINDOW]`, "
        "e.g. `Order=50:200ms,Refund=:2s` (`blackboard worker --batch` replaces it)",
    )

    @field_validator("batch", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str) or (
            isinstance(value, Sequence) and all(isinstance(v, str) for v in value)
        ):
            try:
                return parse_overrides(value)
            except ConfigError as exc:
                reason = {"reason": str(exc)}
                raise PydanticCustomError("batch_override", "{reason}", reason) from None
        return value

    @classmethod
    def from_env(cls, batch: str | Sequence[str] | None = None, **overrides: Any) -> Self:
        """Settings from ``batch`` (e.g. the ``--batch`` values) if given, else from
        ``BLACKBOARD_BATCH`` (unset or empty: no overrides).

        Raises:
            ConfigError: a malformed entry (one line quoting it; ``BLACKBOARD_BATCH: …`` when
                it came from the variable).
        """
        if batch is not None:
            return cls.parse(batch)
        return super().from_env(**overrides)

    @classmethod
    def config_error(cls, exc: ValidationError) -> ConfigError:
        """``BLACKBOARD_BATCH: <what is wrong>`` for a bad override (explicit ones are parsed
        before the environment is read, so this one came from the variable)."""
        err = exc.errors()[0]
        if err["type"] != "batch_override":
            return super().config_error(exc)
        return ConfigError(f"{cls.variable('batch')}: {err['msg']}")

    @classmethod
    def parse(cls, value: str | Sequence[str]) -> Self:
        """Settings from override text alone (the environment is not used).

        Raises:
            ConfigError: a malformed entry.
        """
        return cls(batch=parse_overrides(value))


def resolve(
    overrides: Sequence[BatchOverride], batched: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, BatchOverride]]:
    """Which override applies to which agent and type.

    Args:
        overrides: the operator's entries.
        batched: batch agent → {type name → its model's class name}, for every batch agent of
            the app (an override naming a type only agents of other workers consume is fine).

    Returns:
        agent → type name → override; an entry naming the agent wins over one that does not.

    Raises:
        ConfigError: an entry names an agent that is not a batch agent, or a type none of its
            agents batches, or a short name that fits several types.
    """
    out: dict[str, dict[str, BatchOverride]] = {}
    known = sorted({t for types in batched.values() for t in types})
    for override in sorted(overrides, key=lambda o: o.agent is not None):
        if override.agent is not None and override.agent not in batched:
            raise ConfigError(
                f"batch override {override.text!r}: {override.agent!r} is not a batch agent "
                f"of the app (batch agents: {', '.join(sorted(batched)) or 'none'})"
            )
        agents = [override.agent] if override.agent is not None else sorted(batched)
        matches = {
            name
            for agent in agents
            for name, cls_name in batched[agent].items()
            if name == override.type
        } or {
            name
            for agent in agents
            for name, cls_name in batched[agent].items()
            if override.type in (name.rsplit(".", 1)[-1], cls_name)
        }
        if not matches:
            raise ConfigError(
                f"batch override {override.text!r}: no batch agent consumes type "
                f"{override.type!r} (batched types: {', '.join(known) or 'none'})"
            )
        if len(matches) > 1:
            raise ConfigError(
                f"batch override {override.text!r}: {override.type!r} could be "
                f"{' or '.join(sorted(matches))}; use the full type name"
            )
        (name,) = matches
        for agent in agents:
            if name in batched[agent]:
                out.setdefault(agent, {})[name] = override
    return out


@dataclass(frozen=True, slots=True)
class Release:
    """Why held records were let go to a handler: the admission decision of a batch (or a
    timed-out join), recorded as ``bb.policy.decision`` on the process span that runs it.

    Attributes:
        kind: ``batch`` or ``join``.
        type: the batch's artifact type (None for a join).
        size: how many records it holds.
        why: ``full`` (the batch reached its size), ``window`` (its oldest record waited its
            window out) or ``timeout`` (a partial join).
        queue_wait_ms: how long its oldest record was held, on the runtime's clock.
    """

    kind: Literal["batch", "join"]
    type: str | None
    size: int
    why: Literal["full", "window", "timeout"]
    queue_wait_ms: float

    def __str__(self) -> str:
        of = f" type={self.type}" if self.type is not None else ""
        return f"admitted {self.kind}{of} size={self.size} why={self.why}"
