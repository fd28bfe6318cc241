"""Settings models filled from environment variables, with explicit values winning."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from blackboard.errors import ConfigError

S = TypeVar("S", bound=BaseModel)


def settings_from_env(
    model: type[S], env: Mapping[str, str], overrides: Mapping[str, Any], what: str = "setting"
) -> S:
    """``model`` built from the variables ``env`` maps each field to (unset or empty ones
    skipped), explicit non-None ``overrides`` winning.

    Raises:
        ConfigError: a value is invalid (one line naming it: ``invalid <what> <field>: …``).
    """
    values: dict[str, Any] = {f: os.environ[v] for f, v in env.items() if os.environ.get(v)}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(map(str, err["loc"]))
        msg = str(err["msg"]).removeprefix("Value error, ")  # a model validator's own text
        line = f"invalid {what} {name}: {msg}" if name else f"invalid {what}s: {msg}"
        raise ConfigError(line) from None
