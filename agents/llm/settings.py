"""How a worker's model calls run, from ``BLACKBOARD_LLM_*``: the cassette, re-asks, waits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from blackboard.envsettings import EnvSettings

#: ``record`` writes every model answer to the cassette, ``replay`` answers from it alone
#: (a request never recorded fails), ``off`` ignores it.
CassetteMode = Literal["record", "replay", "off"]


class LLMSettings(EnvSettings):
    """Model calls of a worker (:meth:`from_env`: ``BLACKBOARD_LLM_*``)."""

    model_config = SettingsConfigDict(env_prefix="BLACKBOARD_LLM_")
    what = "LLM setting"

    model: str | None = Field(
        default=None,
        description="the model of agents and calls that name none (`openai:gpt-4o-mini`, "
        "`anthropic:claude-haiku-4-5`, `local:smollm2`)",
    )
    cassette: Path | None = Field(
        default=None,
        description="a JSON-lines file of recorded model answers (record/replay)",
    )
    cassette_mode: CassetteMode | None = Field(
        default=None,
        description="`record`, `replay` or `off` (unset: `replay` if the cassette exists, "
        "else `record`)",
    )
    max_reasks: int = Field(
        default=2,
        ge=0,
        description="times a model is asked again after an answer that does not validate",
    )
    max_wait_s: float = Field(
        default=120.0,
        gt=0,
        description="longest one call waits on 429s before it fails (and is retried)",
    )
    timeout_s: float = Field(default=120.0, gt=0, description="longest one model request")

    def mode(self) -> CassetteMode:
        """The cassette mode in effect."""
        if self.cassette is None:
            return "off"
        if self.cassette_mode is not None:
            return self.cassette_mode
        return "replay" if self.cassette.exists() else "record"
